"""Numbers a user reads before and after training on a built-in task.

Each function takes a model and its tokenizer and returns plain floats, so it works on a fresh model, a trained one,
a ``PeftModel`` or a 4-bit model alike. Sampling is seeded inside ``torch.random.fork_rng``, so measuring a model does
not change the random stream that training then uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

__all__ = ["mean_reward", "pairwise_accuracy", "perplexity", "sample_completions"]


@contextlib.contextmanager
def _eval_mode(model, tokenizer, padding_side: str):
    was_training = model.training
    previous_side = tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = padding_side
    try:
        with torch.no_grad():
            yield
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int = 2,
    max_new_tokens: int = 40,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Sample ``num_samples`` completions of each prompt; returns ``(prompt, completion)`` pairs, prompt-major."""
    batch = [prompt for prompt in prompts for _ in range(num_samples)]
    with _eval_mode(model, tokenizer, "left"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(_device(model))
        output = model.generate(
            **encoded,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    completions = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return list(zip(batch, completions))


def mean_reward(samples: Sequence[tuple[str, str]], reward_fn: Callable) -> float:
    """Mean of ``reward_fn(completions=..., prompts=...)`` over ``(prompt, completion)`` pairs."""
    prompts = [prompt for prompt, _ in samples]
    completions = [completion for _, completion in samples]
    rewards = reward_fn(completions=completions, prompts=prompts)
    return float(sum(rewards) / len(rewards))


@torch.no_grad()
def perplexity(model, tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> float:
    """exp(mean negative log-likelihood per completion token, eos included); prompt tokens are not scored."""
    total_nll, total_tokens = 0.0, 0
    with _eval_mode(model, tokenizer, "right"):
        for prompt, completion in zip(prompts, completions):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(completion + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            input_ids = torch.tensor([prompt_ids + completion_ids], device=_device(model))
            labels = input_ids.clone()
            labels[:, : len(prompt_ids)] = -100
            loss = model(input_ids=input_ids, labels=labels).loss
            total_nll += loss.item() * len(completion_ids)
            total_tokens += len(completion_ids)
    return float(torch.exp(torch.tensor(total_nll / total_tokens)))


@torch.no_grad()
def pairwise_accuracy(model, tokenizer, rows: Sequence[dict[str, str]]) -> float:
    """Fraction of preference rows where a reward model scores ``prompt + chosen`` above ``prompt + rejected``."""
    with _eval_mode(model, tokenizer, "right"):

        def score(column: str) -> torch.Tensor:
            texts = [row["prompt"] + row[column] + tokenizer.eos_token for row in rows]
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            return model(**encoded.to(_device(model))).logits[:, 0].float().cpu()

        return float((score("chosen") > score("rejected")).float().mean())
