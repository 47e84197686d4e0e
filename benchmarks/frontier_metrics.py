"""The maths of the reward-KL frontier (``benchmarks/frontier.py``), as small functions tested in
``tests/test_benchmarks.py``.

- ``sample_completions``: draw completions from a policy as it is (temperature 1, no top-k / top-p truncation), keep
  the token ids, so the KL below is taken on exactly the tokens that were sampled (decoding and re-encoding text can
  change them).
- ``completion_log_probs`` and ``sequence_kl``: the Monte Carlo estimate of the sequence KL to the SFT model,

      KL(pi || pi_sft) ~= 1/B sum_b sum_t [log pi(y_t^b | x^b, y_<t^b) - log pi_sft(y_t^b | x^b, y_<t^b)],
      y^b ~ pi(. | x^b),

  summed over the completion's tokens up to and including the first EOS.
- ``best_of_n_kl_estimate``: KL of best-of-n sampling to its base policy, estimated from rewards of base-policy
  samples. Best-of-n puts mass ``F(r)^n - F(r-)^n`` on the outputs of reward ``r`` (``F`` the reward's CDF under the
  base policy), spread over them in proportion to the base policy, so the KL is that of the reward levels (Beirami et
  al. 2024, https://arxiv.org/abs/2401.01879). With no ties it tends to the analytic ``log n - (n - 1) / n``
  (``trl_extras.best_of_n_kl``); ties (the same completion drawn twice) make it smaller.
- ``mean_and_spread``: mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "best_of_n_kl_estimate",
    "completion_log_probs",
    "mean_and_spread",
    "sample_completions",
    "sequence_kl",
]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B, T) mask of the completion tokens up to and including the first ``eos_token_id`` (what ``generate`` pads
    after)."""
    is_eos = (completion_ids == eos_token_id).long()  # (B, T)
    eos_before = is_eos.cumsum(-1) - is_eos  # (B, T): number of EOS strictly before t
    return (eos_before == 0).long()


@torch.no_grad()
def sample_completions(
    model, tokenizer, prompts: Sequence[str], *, num_samples: int, max_new_tokens: int, seed: int
) -> dict[str, torch.Tensor | list[str]]:
    """Sample ``num_samples`` completions per prompt from ``model`` unchanged (temperature 1, ``top_k=0``,
    ``top_p=1``); prompt-major order.

    Returns ``input_ids`` (B, P + T) left-padded prompt and completion, ``attention_mask`` (B, P + T),
    ``completion_mask`` (B, P + T) (1 on completion tokens up to and including the first EOS), ``prompts`` and
    ``completions`` (decoded text, special tokens skipped), with ``B = len(prompts) * num_samples``.
    """
    batch = [prompt for prompt in prompts for _ in range(num_samples)]
    encoded = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    encoded = encoded.to(_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            output = model.generate(
                **encoded,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
    finally:
        model.train(was_training)
    prompt_length = encoded["input_ids"].shape[1]
    completion_ids = output[:, prompt_length:]  # (B, T)
    completion_mask = completion_mask_from_ids(completion_ids, tokenizer.eos_token_id)  # (B, T)
    kept_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)  # (B, T)
    prompt_mask = encoded["attention_mask"]  # (B, P)
    return {
        "input_ids": output,
        "attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),
        "completion_mask": torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1),
        "prompts": batch,
        "completions": tokenizer.batch_decode(kept_ids, skip_special_tokens=True),
    }


@torch.no_grad()
def completion_log_probs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """(B, L) log-probability of each token of ``input_ids`` (B, L) given the tokens before it, zero outside
    ``completion_mask``.

    Position ids count only attended tokens, as ``generate`` does with left padding, so these are the probabilities
    the tokens were sampled with.
    """
    device = _device(model)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size].to(device)  # (b, L)
            mask = attention_mask[start : start + batch_size].to(device)  # (b, L)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, L)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, :-1]  # (b, L-1, V)
            logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (b, L-1)
            chunks.append(F.pad(logps, (1, 0)).cpu())  # (b, L): token 0 has no context
    finally:
        model.train(was_training)
    return torch.cat(chunks) * completion_mask


def sequence_kl(
    policy_logps: torch.Tensor, reference_logps: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """(B,) sum over each sampled completion's tokens of ``log pi - log pi_ref``; its mean over samples drawn from
    ``pi`` is the Monte Carlo estimate of the sequence KL(pi || pi_ref).

    All inputs are (B, T); ``completion_mask`` is 1 on the tokens that count.
    """
    return ((policy_logps - reference_logps) * completion_mask).sum(-1)


def best_of_n_kl_estimate(rewards: Sequence[float] | torch.Tensor, n: int) -> float:
    """KL(best-of-n || base policy) for one prompt, from the rewards of M independent base-policy samples.

    Exact for the empirical distribution of the M samples: with distinct reward levels ``r_1 < ... < r_K`` of
    probabilities ``q_k`` and CDF ``F_k``, best-of-n gives level k the probability ``p_k = F_k^n - F_(k-1)^n`` and
    ``KL = sum_k p_k log(p_k / q_k)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    values = torch.as_tensor(rewards, dtype=torch.float64).flatten()  # (M,)
    if values.numel() == 0:
        raise ValueError("best_of_n_kl_estimate needs at least one reward")
    _, counts = torch.unique(values, sorted=True, return_counts=True)  # (K,) reward levels, ascending
    q = counts.double() / values.numel()  # (K,) base probability of each level
    cdf = q.cumsum(0)  # (K,)
    p = cdf**n - (cdf - q) ** n  # (K,) best-of-n probability of each level
    terms = torch.where(p > 0, p * torch.log(p / q), torch.zeros_like(p))
    return float(terms.sum().clamp(min=0.0))


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of ``values``."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance)
