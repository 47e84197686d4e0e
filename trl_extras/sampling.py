"""Best-of-N sampling: draw N completions per prompt and keep the one a reward scores highest.

The simplest way to buy reward with divergence from the sampling policy, and the inference-time baseline of the
RLHF literature (Stiennon et al. 2020; Gao et al. 2022, https://arxiv.org/abs/2210.10760, whose analytic KL of
best-of-N to the base policy is ``log N - (N - 1) / N``; see ``best_of_n_kl``).

Rewards use TRL's reward-function convention: a callable ``f(prompts, completions, **kwargs) -> list[float]``, or a
sequence-classification model with one label (a reward model) and its tokenizer.

```python
from trl_extras import best_of_n

results = best_of_n(model, tokenizer, ["The movie was"], reward_funcs=my_reward, n=8, max_new_tokens=24)
results[0]["completion"], results[0]["reward"]
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["best_of_n", "best_of_n_kl"]

RewardFunc = Callable[..., Sequence[float | None]]


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || base policy) = log n - (n - 1) / n (an upper bound for discrete outputs)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def _is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def _prompt_text(prompt: Any, tokenizer) -> str:
    if _is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    return prompt


def _score(reward_funcs, reward_weights, prompts, completions, reward_processing_classes) -> torch.Tensor:
    """(num_completions,) weighted sum of the rewards; None from a reward function counts as -inf (never chosen)."""
    total = torch.zeros(len(completions), dtype=torch.float64)
    for func, weight, rm_tokenizer in zip(reward_funcs, reward_weights, reward_processing_classes):
        if isinstance(func, torch.nn.Module):
            texts = [
                tokenizer_text + (c if isinstance(c, str) else c[-1]["content"])
                for tokenizer_text, c in zip((_prompt_text(p, rm_tokenizer) for p in prompts), completions)
            ]
            inputs = rm_tokenizer(texts, return_tensors="pt", padding=True, padding_side="right").to(func.device)
            with torch.inference_mode():
                scores = func(**inputs).logits[:, 0].double().cpu()
        else:
            values = list(func(prompts=list(prompts), completions=list(completions)))
            if len(values) != len(completions):
                raise ValueError(
                    f"reward function {getattr(func, '__name__', func)!r} returned {len(values)} values for "
                    f"{len(completions)} completions"
                )
            scores = torch.tensor([float("-inf") if v is None else float(v) for v in values], dtype=torch.float64)
        total += weight * scores
    return total


@torch.no_grad()
def best_of_n(
    model,
    processing_class,
    prompts: Sequence[Any],
    reward_funcs: RewardFunc | torch.nn.Module | Sequence[RewardFunc | torch.nn.Module],
    n: int = 4,
    *,
    reward_weights: Sequence[float] | None = None,
    reward_processing_classes: Sequence[Any] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    **generate_kwargs,
) -> list[dict[str, Any]]:
    """Sample ``n`` completions per prompt from ``model`` and keep the best under the (weighted) reward.

    Args:
        model: a causal LM (``generate`` is used with sampling).
        processing_class: its tokenizer (chat template used for conversational prompts).
        prompts: strings, or lists of chat messages.
        reward_funcs: one or several rewards (callables in TRL's convention, or reward models).
        n: completions sampled per prompt.
        reward_weights: one weight per reward function (default 1 each).
        reward_processing_classes: tokenizers of the reward models (default: ``processing_class``).
        batch_size: prompts per ``generate`` call (each expands to ``n`` sequences).
        seed: seeds torch before sampling, for reproducible draws.

    Returns:
        One dict per prompt: ``prompt``, ``completion`` (best), ``reward`` (its reward), ``completions`` and
        ``rewards`` (all ``n``, in sampling order). Conversational prompts get assistant-message completions.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not isinstance(reward_funcs, (list, tuple)):
        reward_funcs = [reward_funcs]
    reward_weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
    if len(reward_weights) != len(reward_funcs):
        raise ValueError(f"got {len(reward_weights)} reward_weights for {len(reward_funcs)} reward_funcs")
    if reward_processing_classes is None:
        reward_processing_classes = [processing_class] * len(reward_funcs)
    if seed is not None:
        torch.manual_seed(seed)

    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            texts = [_prompt_text(p, tokenizer) for p in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
            inputs = inputs.to(model.device)
            output = model.generate(
                **inputs,
                do_sample=True,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                pad_token_id=tokenizer.pad_token_id,
                **generate_kwargs,
            )
            decoded = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            repeated = [p for p in batch for _ in range(n)]  # generate returns prompt-major: p0 x n, p1 x n, ...
            completions = [
                [{"role": "assistant", "content": text}] if _is_conversational(p) else text
                for p, text in zip(repeated, decoded)
            ]
            rewards = _score(reward_funcs, reward_weights, repeated, completions, reward_processing_classes)
            for i, prompt in enumerate(batch):
                group = rewards[i * n : (i + 1) * n]
                best = int(torch.argmax(group))
                results.append(
                    {
                        "prompt": prompt,
                        "completion": completions[i * n + best],
                        "reward": float(group[best]),
                        "completions": completions[i * n : (i + 1) * n],
                        "rewards": group.tolist(),
                    }
                )
    finally:
        model.train(was_training)
    return results
