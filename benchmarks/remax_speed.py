"""Step time and peak memory: ReMaxTrainer vs stock TRL GRPOTrainer and RLOOTrainer (and our PPOTrainer, on request).

    python benchmarks/remax_speed.py                                    # CPU-sized defaults
    python benchmarks/remax_speed.py --hidden_size 1024 --num_layers 8 --batch_size 32 --completion_length 128
    python benchmarks/remax_speed.py --with_ppo                         # also ReMax vs PPO, same prompts per step

Same number of generated tokens per step: every sequence is generated to exactly ``--completion_length`` tokens
(``min_new_tokens``), and each trainer generates ``--batch_size`` sequences per step:

- GRPO and RLOO: ``batch_size / 2`` prompts x 2 samples (their minimum group size), all trained on;
- ReMax: ``batch_size / 2`` prompts x (1 sample + 1 greedy completion), decoded in one ``generate`` call of
  ``batch_size`` rows, as GRPO's; it trains on the ``batch_size / 2`` samples. Per step both run the same generation
  (one prefill and ``completion_length - 1`` decoding forwards of ``batch_size`` rows); ReMax's forward and backward
  for the loss cover half as many sequences, so its step can at best cost GRPO's generation plus half its training.

With ``--with_ppo``, a second table compares ReMax and our PPOTrainer at the same number of prompts per step
(``batch_size``, one sample each), as the ReMax paper (Li et al. 2023) compares them; the goal is ReMax at no more than
0.6 of PPO's memory and time. Both keep a reference model (PPO's KL is in the reward, ReMax gets ``beta=0.05``); PPO
also trains a value model, ReMax decodes a greedy completion. ``--ppo_epochs`` (default 1) sets PPO's passes per
rollout; with 1, a step of either trainer is one rollout and one update.

Each configuration runs in its own fresh process (``benchmarks/harness.py``); the tables give the median step time and
peak memory and their ratio to the baseline. The model is the offline tiny Llama scaled up through
``build_tiny_causal_lm``'s config overrides, so nothing is downloaded; the reward is programmatic.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by path: make `harness` importable

from harness import compare, ratio_table, training_args  # noqa: E402

THIS_FILE = str(Path(__file__).resolve())
PROMPTS = ["The movie was", "I thought the film was", "The capital of France is", "The quick brown fox"]


def vowel_fraction(completions, **kwargs):
    return [sum(ch in "aeiou" for ch in text) / max(len(text), 1) for text in completions]


def _build(
    trainer_name: str,
    model_path: str,
    steps: int,
    prompts_per_step: int,
    num_generations: int,
    completion_length: int,
    output_dir: str,
    overrides: dict | None = None,
):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if trainer_name == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    elif trainer_name == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    elif trainer_name == "remax":
        from trl_extras import ReMaxConfig as Config
        from trl_extras import ReMaxTrainer as Trainer
    elif trainer_name == "ppo":  # hook for our PPOTrainer (trl_extras/trainer/ppo_trainer.py)
        from trl_extras import PPOConfig as Config
        from trl_extras import PPOTrainer as Trainer
    else:
        raise ValueError(trainer_name)

    torch.manual_seed(0)
    config_kwargs = dict(
        max_completion_length=completion_length,
        generation_kwargs={"min_new_tokens": completion_length},  # every sequence has the same length
        gradient_checkpointing=False,
    )
    if trainer_name != "ppo":  # PPOConfig fixes one completion per prompt itself
        config_kwargs["num_generations"] = num_generations
    config_kwargs.update(overrides or {})
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return Trainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        reward_funcs=vowel_fraction,
        args=training_args(Config, output_dir, steps, prompts_per_step * num_generations, 1e-6, **config_kwargs),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * (steps * prompts_per_step)}),
        processing_class=tokenizer,
    )


def build_grpo(**kwargs):
    return _build("grpo", **kwargs)


def build_rloo(**kwargs):
    return _build("rloo", **kwargs)


def build_remax(**kwargs):
    return _build("remax", **kwargs)


def build_ppo(**kwargs):
    return _build("ppo", **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8, help="sequences generated per step, per trainer")
    parser.add_argument("--completion_length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="runs per trainer, interleaved")
    parser.add_argument("--with_ppo", action="store_true", help="also compare with trl_extras.PPOTrainer")
    parser.add_argument("--ppo_epochs", type=int, default=1, help="PPO passes per rollout (1: a step is a rollout)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()
    if args.batch_size % 2:
        parser.error("--batch_size must be even (GRPO and RLOO need groups of 2)")

    from trl_extras.testing import build_tiny_causal_lm

    workdir = tempfile.mkdtemp(prefix="trl-extras-bench-remax-")
    model_path = build_tiny_causal_lm(
        f"{workdir}/model",
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=max(1, args.hidden_size // 64),
        num_key_value_heads=max(1, args.hidden_size // 64),
    )
    common = dict(model_path=model_path, steps=args.steps, completion_length=args.completion_length)
    half = args.batch_size // 2

    def config(name, prompts, generations, **overrides):
        kwargs = {**common, "prompts_per_step": prompts, "num_generations": generations, "overrides": overrides}
        return (f"{THIS_FILE}:build_{name}", {**kwargs, "output_dir": f"{workdir}/{name}-{prompts}"})

    results = compare(
        {"grpo": config("grpo", half, 2), "rloo": config("rloo", half, 2), "remax": config("remax", half, 1)},
        repeats=args.repeats,
    )
    print(
        f"model: Llama hidden {args.hidden_size}, {args.num_layers} layers; {args.batch_size} sequences of "
        f"{args.completion_length} tokens generated per step by each trainer; {args.steps} steps (first 2 dropped)"
    )
    print(ratio_table(results, baseline="grpo"))
    if args.with_ppo:
        # Both keep a reference model for the KL penalty (PPO in the reward, ReMax in the loss with beta); PPO also
        # trains a value model. One optimisation pass per rollout for both, so a step is a rollout plus an update.
        ppo_results = compare(
            {
                "ppo": config("ppo", args.batch_size, 1, num_ppo_epochs=args.ppo_epochs),
                "remax": config("remax", args.batch_size, 1, beta=0.05),
            },
            repeats=args.repeats,
        )
        print(
            f"\nReMax (beta=0.05) vs PPO (num_ppo_epochs={args.ppo_epochs}) at {args.batch_size} prompts per step, "
            "one sample each; ReMax adds the greedy pass, PPO the value model"
        )
        print(ratio_table(ppo_results, baseline="ppo"))
        results = {**results, **{f"{name} (vs ppo)": runs for name, runs in ppo_results.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
