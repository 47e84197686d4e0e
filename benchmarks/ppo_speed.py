"""PPO: trl-extras' PPOTrainer (on TRL 1.16) against the last TRL release that shipped a PPOTrainer (TRL 1.12.0,
``trl.experimental.ppo``; TRL 1.13 removed it).

    python -m venv /tmp/trl112-venv
    /tmp/trl112-venv/bin/pip install torch==2.13.0 trl==1.12.0 transformers==5.23.0 accelerate==1.15.0 datasets==5.2.0
    python benchmarks/ppo_speed.py --old_python /tmp/trl112-venv/bin/python

Both trainers get the same tiny SFT policy, reward model (which also initialises the value model), prompts and
hyperparameters (`per_device_train_batch_size`, 4 PPO epochs, 1 minibatch, `kl_coef`, clip ranges, `vf_coef`, GAE,
learning rate, temperature 1, completions stopped at EOS) for the same number of episodes (completions), built by the
offline sentiment task (`trl_extras.tasks.sentiment`). The same transformers and torch versions run in both
virtualenvs, so the difference is the trainers'.

Measured per run, each in a fresh process (`benchmarks/harness.py`):

- `s_per_episode`: wall time of `trainer.train()` divided by the episodes sampled (generation, scoring and all PPO
  epochs included). Step times are not comparable: the old trainer's step is a whole rollout, ours an optimizer step.
- `peak_mem_mb`: the harness's peak memory (CUDA allocator peak, or peak RSS above the pre-build baseline on CPU).
- `reward_after`: the task's ground-truth sentiment reward of completions sampled from the trained policy for the 16
  held-out review openings (4 samples each, fixed seed), the same measurement for both; `reward_before` is the
  untrained policy's. `rm_score_last`: the reward model's mean score over the last rollout, as each trainer logs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by path: make `harness` importable

from harness import compare, ratio_table  # noqa: E402

THIS_FILE = str(Path(__file__).resolve())
EVAL_SAMPLES_PER_PROMPT = 4


def _ground_truth_reward_after(policy, tokenizer, max_new_tokens: int) -> float:
    from trl_extras.tasks import evaluation, sentiment

    samples = evaluation.sample_completions(
        policy, tokenizer, sentiment.eval_prompts(), num_samples=EVAL_SAMPLES_PER_PROMPT, max_new_tokens=max_new_tokens
    )
    return evaluation.mean_reward(samples, sentiment.ground_truth_reward)


def _instrument(trainer, policy_of, tokenizer, episodes: int, max_new_tokens: int, score_key: str):
    """Time ``trainer.train()`` and report per-episode time and the reward reached via ``benchmark_extras``."""
    train = trainer.train
    timing = {}

    def timed_train(*args, **kwargs):
        start = time.perf_counter()
        output = train(*args, **kwargs)
        timing["train_s"] = time.perf_counter() - start
        return output

    def benchmark_extras():
        scores = [log[score_key] for log in trainer.state.log_history if score_key in log]
        return {
            "train_s": timing["train_s"],
            "episodes": episodes,
            "s_per_episode": timing["train_s"] / episodes,
            "reward_after": _ground_truth_reward_after(policy_of(trainer), tokenizer, max_new_tokens),
            "rm_score_last": scores[-1] if scores else float("nan"),
        }

    trainer.train = timed_train
    trainer.benchmark_extras = benchmark_extras
    return trainer


def build_ours(policy: str, reward_model: str, prompts: list[str], episodes: int, batch_size: int, **hp):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_extras import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    config = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="ppo-bench-ours-"),
        per_device_train_batch_size=batch_size,
        total_episodes=episodes,
        num_ppo_epochs=hp["num_ppo_epochs"],
        num_mini_batches=1,
        learning_rate=hp["learning_rate"],
        kl_coef=hp["kl_coef"],
        lam=0.95,  # TRL 1.12's default (ours is 1.0 since issue 17), so both run the same recipe
        max_completion_length=hp["completion_length"],
        temperature=1.0,
        gradient_checkpointing=False,
        bf16=torch.cuda.is_available(),
        logging_steps=hp["num_ppo_epochs"],
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = PPOTrainer(
        model=policy,
        reward_funcs=reward_model,  # the value model starts from it, as in the classic recipe
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    return _instrument(trainer, lambda t: t.model, tokenizer, episodes, hp["completion_length"], "objective/scores")


def build_old(policy: str, reward_model: str, prompts: list[str], episodes: int, batch_size: int, **hp):
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy, padding_side="left")
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
    config = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="ppo-bench-old-"),
        per_device_train_batch_size=batch_size,
        total_episodes=episodes,
        num_ppo_epochs=hp["num_ppo_epochs"],
        num_mini_batches=1,
        learning_rate=hp["learning_rate"],
        kl_coef=hp["kl_coef"],
        response_length=hp["completion_length"],
        temperature=1.0,
        stop_token="eos",
        num_sample_generations=0,
        gradient_checkpointing=False,
        bf16=torch.cuda.is_available(),
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(policy),
        ref_model=AutoModelForCausalLM.from_pretrained(policy),
        reward_model=AutoModelForSequenceClassification.from_pretrained(reward_model, num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(reward_model, num_labels=1),
        train_dataset=dataset,
        eval_dataset=dataset,
    )
    return _instrument(
        trainer, lambda t: t.policy_model, tokenizer, episodes, hp["completion_length"], "objective/scores"
    )


def reward_before(policy: str, completion_length: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return _ground_truth_reward_after(
        AutoModelForCausalLM.from_pretrained(policy), AutoTokenizer.from_pretrained(policy), completion_length
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old_python", required=True, help="python of a virtualenv with trl==1.12.0")
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16, help="episodes per rollout")
    parser.add_argument("--completion_length", type=int, default=24)
    parser.add_argument("--num_ppo_epochs", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--kl_coef", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()

    from trl_extras.tasks import sentiment

    kwargs = {
        "policy": sentiment.default_policy_path(),
        "reward_model": sentiment.default_reward_model_path(),
        "prompts": list(sentiment.build_prompt_dataset()["prompt"]),
        "episodes": args.episodes,
        "batch_size": args.batch_size,
        "completion_length": args.completion_length,
        "num_ppo_epochs": args.num_ppo_epochs,
        "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef,
    }
    results = compare(
        {
            "trl 1.12 PPOTrainer": (f"{THIS_FILE}:build_old", {**kwargs, "__python__": args.old_python}),
            "trl-extras PPOTrainer": (f"{THIS_FILE}:build_ours", kwargs),
        },
        repeats=args.repeats,
        warmup_steps=0,
    )
    print(f"reward before training (ground truth): {reward_before(kwargs['policy'], args.completion_length):.3f}")
    print(
        ratio_table(
            results,
            baseline="trl 1.12 PPOTrainer",
            keys=("s_per_episode", "peak_mem_mb", "reward_after", "rm_score_last"),
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
