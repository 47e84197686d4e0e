"""ReMax (trl-extras) on the built-in offline default (a tiny model built locally; no network needed).

    python examples/remax.py
    python examples/remax.py --num_generations 2      # two samples per prompt, sharing the greedy baseline

Pass ``--model_name_or_path`` to train a real model instead. ReMax (Li et al. 2023, https://arxiv.org/abs/2310.10505)
is REINFORCE with the reward of the greedy completion as the baseline; ``ReMaxTrainer`` takes the same arguments as
TRL's ``GRPOTrainer``. The reward here is programmatic (the fraction of vowels in the completion), and the script
prints the mean reward of sampled completions before and after training.
"""

import argparse
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_extras import ReMaxConfig, ReMaxTrainer
from trl_extras.testing import build_tiny_causal_lm

PROMPTS = ["The movie was", "I thought the film was", "The capital of France is", "The quick brown fox"]


def vowel_fraction(completions, **kwargs):
    """Reward: the fraction of the completion's characters that are vowels."""
    return [sum(ch in "aeiouAEIOU" for ch in text) / max(len(text), 1) for text in completions]


@torch.no_grad()
def mean_sampled_reward(model, tokenizer, max_new_tokens, samples=16):
    torch.manual_seed(0)
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    out = model.generate(
        **inputs,
        do_sample=True,
        max_new_tokens=max_new_tokens,
        num_return_sequences=samples,
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(vowel_fraction(texts)) / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--max_steps", type=int, default=15)
    parser.add_argument("--num_generations", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=5e-2)
    parser.add_argument("--max_completion_length", type=int, default=8)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="trl-extras-remax-")
    model_path = args.model_name_or_path or build_tiny_causal_lm(f"{workdir}/model")
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = Dataset.from_dict({"prompt": PROMPTS * 64})
    config = ReMaxConfig(
        output_dir=args.output_dir or f"{workdir}/out",
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        per_device_train_batch_size=8,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        logging_steps=5,
        gradient_checkpointing=False,
        report_to="none",
        bf16=torch.cuda.is_available(),
        save_strategy="no",
    )
    before = mean_sampled_reward(model.eval(), tokenizer, args.max_completion_length)
    trainer = ReMaxTrainer(
        model=model, reward_funcs=vowel_fraction, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    after = mean_sampled_reward(model.eval(), tokenizer, args.max_completion_length)
    print(f"mean reward (fraction of vowels) of sampled completions: {before:.3f} before, {after:.3f} after")


if __name__ == "__main__":
    main()
