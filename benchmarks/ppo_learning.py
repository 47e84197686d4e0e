"""PPO against stock GRPO at equal optimizer steps, and which critic remedies close the gap.

    python benchmarks/ppo_learning.py --steps 32 --seeds 0 1 2 --variants grpo ppo ppo_warmup2 ...

Both trainers start from the built-in task's tiny SFT policy (`trl_extras.tasks.default_policy_path`), train on its
prompts for the same number of optimizer steps with the same learning rate, and generate the same number of
sequences per rollout (16, of 16 tokens, temperature 1). GRPO: stock `GRPOTrainer` defaults otherwise (4 completions
per prompt, one optimizer step per rollout). PPO: `PPOConfig` defaults otherwise (1 completion per prompt, 4 PPO
epochs per rollout, so a quarter of GRPO's fresh sequences per step), the default value model built from the policy.

The reward is `topic_words` below (a word list no other test or benchmark uses): it counts the review's topic words.
"Final reward" is the mean reward of 8 sampled completions of each of the 16 held-out prompts after training, with a
fixed sampling seed. Prints one JSON line per run and a summary table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time

import torch

TOPIC_WORDS = frozenset(
    "acting story ending music dialogue cast pacing plot camera script lead humour director film movie cinema".split()
)
_WORD = re.compile(r"[a-z']+")


def topic_words(completions, **kwargs):
    """Reward: topic words from `TOPIC_WORDS` in the completion, over max(#words, 8); in [0, 1]."""
    scores = []
    for completion in completions:
        words = _WORD.findall(completion.lower())
        scores.append(sum(word in TOPIC_WORDS for word in words) / max(len(words), 8))
    return scores


COMMON = dict(
    per_device_train_batch_size=16, max_completion_length=16, temperature=1.0, bf16=False, use_cpu=True,
    report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
)  # fmt: skip

# name -> PPOConfig overrides; "grpo" is the stock GRPOTrainer
VARIANTS: dict[str, dict] = {
    "ppo": {},
    "ppo_normal_head": {"value_head_init": "normal"},
    "ppo_former_defaults": {"value_head_init": "normal", "lam": 0.95},  # before issue 17
    "ppo_lam095": {"lam": 0.95},
    "ppo_1epoch": {"num_ppo_epochs": 1},
    "ppo_warmup1": {"critic_warmup_rollouts": 1},
    "ppo_normal_head_warmup1": {"value_head_init": "normal", "critic_warmup_rollouts": 1},
    "ppo_lam1": {"lam": 1.0},
    "ppo_kl0": {"kl_coef": 0.0},
    "ppo_lam1_kl0": {"lam": 1.0, "kl_coef": 0.0},
    "ppo_critic_lr_x10": {"value_learning_rate": 10.0},  # times `learning_rate`
    "ppo_lam1_critic_lr_x10": {"lam": 1.0, "value_learning_rate": 10.0},
    "ppo_lam1_critic_lr_x3": {"lam": 1.0, "value_learning_rate": 3.0},
    "ppo_lam1_warmup1": {"lam": 1.0, "critic_warmup_rollouts": 1},
    "ppo_normal_head_critic_lr_x10": {"value_head_init": "normal", "value_learning_rate": 10.0},
}


def build(variant: str, seed: int, steps: int, learning_rate: float, output_dir: str, policy: str):
    from trl import GRPOConfig, GRPOTrainer

    from trl_extras import PPOConfig, PPOTrainer
    from trl_extras.tasks import build_prompt_dataset

    dataset = build_prompt_dataset()
    common = dict(COMMON, output_dir=output_dir, seed=seed, max_steps=steps, learning_rate=learning_rate)
    if variant == "grpo":
        args = GRPOConfig(**common, num_generations=4)
        return GRPOTrainer(model=policy, reward_funcs=topic_words, args=args, train_dataset=dataset)
    overrides = dict(VARIANTS[variant])
    if "value_learning_rate" in overrides:
        overrides["value_learning_rate"] *= learning_rate
    args = PPOConfig(**common, **overrides)
    return PPOTrainer(model=policy, reward_funcs=topic_words, args=args, train_dataset=dataset)


@torch.no_grad()
def final_reward(model, tokenizer, samples_per_prompt: int = 8, seed: int = 1234) -> float:
    from trl_extras.tasks.sentiment import eval_prompts

    prompts = [p for p in eval_prompts() for _ in range(samples_per_prompt)]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    model.eval()
    out = model.generate(**batch, do_sample=True, temperature=1.0, max_new_tokens=COMMON["max_completion_length"])
    completions = tokenizer.batch_decode(out[:, batch["input_ids"].size(1) :], skip_special_tokens=True)
    return statistics.fmean(topic_words(completions))


def run(variant: str, seed: int, steps: int, learning_rate: float, policy: str) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        trainer = build(variant, seed, steps, learning_rate, output_dir, policy)
        trainer.train()
        curve = [(log["step"], log["reward"]) for log in trainer.state.log_history if "reward" in log]
        result = {
            "variant": variant, "seed": seed, "steps": steps, "lr": learning_rate,
            "final_reward": final_reward(trainer.model, trainer.processing_class),
            "train_reward_curve": curve, "seconds": time.perf_counter() - start,
        }  # fmt: skip
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["grpo", *VARIANTS])
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    from trl_extras.tasks import default_policy_path

    policy = default_policy_path()
    before = final_reward(
        __import__("transformers").AutoModelForCausalLM.from_pretrained(policy),
        __import__("transformers").AutoTokenizer.from_pretrained(policy),
    )
    print(json.dumps({"variant": "initial policy", "final_reward": before}), flush=True)
    results = {}
    for seed in options.seeds:
        for variant in options.variants:
            result = run(variant, seed, options.steps, options.lr, policy)
            print(json.dumps(result), flush=True)
            results.setdefault(variant, []).append(result["final_reward"])
    print(f"\n| variant | final reward after {options.steps} steps (mean over seeds {options.seeds}) | per seed |")
    print("|---|---|---|")
    for variant, rewards in results.items():
        print(f"| {variant} | {statistics.fmean(rewards):.3f} | {', '.join(f'{r:.3f}' for r in rewards)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
