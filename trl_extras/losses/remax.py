"""ReMax maths: REINFORCE with the greedy completion's reward as the baseline.

ReMax (Li et al. 2023, https://arxiv.org/abs/2310.10505, Algorithm 2), for each prompt ``x``:

    a   ~ pi_theta(. | x)                  # a sampled completion
    a*  = argmax decoding of pi_theta(. | x) # the greedy completion, no gradient
    loss = -(log pi_theta(a | x)) * (r(x, a) - r(x, a*))   # log-prob summed over the completion's tokens

averaged over the batch. Its gradient is the paper's estimator

    g(theta) = 1/N sum_i sum_t grad log pi_theta(a_t^i | x^i, a_{1:t-1}^i) * (r(x^i, a^i) - r(x^i, a*^i)).

The greedy reward depends on ``x`` but not on the sampled ``a``, so subtracting it keeps the estimator unbiased while
cutting its variance. With several samples per prompt (``num_generations > 1``) they all share their prompt's greedy
baseline.

Every function is pure and unreduced where that makes sense: the trainer wires them in, tests check them on hand-made
tensors. Shapes: ``B`` completions in the batch, ``G`` samples per prompt (``B % G == 0``), ``K`` reward functions,
``T`` completion tokens.
"""

from __future__ import annotations

import torch

__all__ = ["remax_advantages", "remax_loss", "weighted_rewards"]

SCALE_REWARDS = ("none", "batch", "group")


def weighted_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """Total reward per row, ``sum_k w_k r_k``, skipping reward functions that returned ``None`` (NaN).

    A row for which every reward function returned ``None`` is unscorable and gets NaN, as in GRPO.

    Args:
        rewards_per_func: ``(B, K)``, NaN where a reward function returned ``None``.
        reward_weights: ``(K,)``.

    Returns:
        ``(B,)``.
    """
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func).unsqueeze(0)).nansum(dim=1)  # (B,)
    return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), torch.nan)


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs; 0 where fewer than two values are present."""
    count = (~torch.isnan(x)).sum(dim=dim) if dim is not None else (~torch.isnan(x)).sum()
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    sq = torch.nansum((x - mean) ** 2, dim=dim) if dim is not None else torch.nansum((x - mean) ** 2)
    var = sq / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), torch.zeros_like(var))


def remax_advantages(
    rewards_per_func: torch.Tensor,
    greedy_rewards_per_func: torch.Tensor,
    reward_weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str = "none",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Advantage of each sampled completion over its prompt's greedy completion, ``r(x, a) - r(x, a*)``.

    The difference is taken per reward function and then weighted and summed, so a reward function that returned
    ``None`` for either the sample or its greedy completion is left out of that row (for complete rows this equals the
    difference of the weighted totals). A row with no reward function scoring both gets advantage 0: it carries no
    learning signal, as unscorable rows do in GRPO.

    Args:
        rewards_per_func: ``(B, K)`` rewards of the sampled completions, grouped by prompt: rows ``g*G .. g*G+G-1``
            share a prompt.
        greedy_rewards_per_func: ``(B // G, K)`` rewards of the greedy completion of each prompt, in the same order.
        reward_weights: ``(K,)``.
        num_generations: ``G``.
        scale_rewards: ``"none"`` (the paper), ``"batch"`` (divide by the standard deviation of the sampled total
            rewards over the batch) or ``"group"`` (over each prompt's ``G`` samples; needs ``G > 1``). Same meaning as
            GRPO's ``scale_rewards``, with the greedy reward in place of the group mean.
        eps: added to the standard deviation.

    Returns:
        ``(B,)`` advantages; 0 for unscorable rows.
    """
    if rewards_per_func.shape[0] != greedy_rewards_per_func.shape[0] * num_generations:
        raise ValueError(
            f"Expected {rewards_per_func.shape[0] // max(num_generations, 1)} greedy rows for {rewards_per_func.shape[0]} "
            f"samples with num_generations={num_generations}, got {greedy_rewards_per_func.shape[0]}."
        )
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}.")
    greedy = greedy_rewards_per_func.repeat_interleave(num_generations, dim=0)  # (B, K)
    advantages = weighted_rewards(rewards_per_func - greedy, reward_weights)  # (B,), NaN if no func scored both
    if scale_rewards == "batch":
        advantages = advantages / (_nanstd(weighted_rewards(rewards_per_func, reward_weights)) + eps)
    elif scale_rewards == "group":
        if num_generations < 2:
            raise ValueError("scale_rewards='group' needs num_generations > 1: a group of one sample has no spread.")
        grouped = weighted_rewards(rewards_per_func, reward_weights).view(-1, num_generations)  # (B // G, G)
        advantages = advantages / (_nanstd(grouped, dim=1).repeat_interleave(num_generations) + eps)
    return torch.nan_to_num(advantages, nan=0.0)


def remax_loss(per_token_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Algorithm 2's loss per completion, ``-(sum_t log pi(a_t | x, a_<t)) * (r(x, a) - r(x, a*))``.

    The paper's batch loss is ``remax_loss(...).mean()``.

    Args:
        per_token_logps: ``(B, T)`` log-probabilities of the sampled completion tokens under the policy.
        advantages: ``(B,)`` from :func:`remax_advantages`, without gradient.
        mask: ``(B, T)``, 1 on completion tokens, 0 on padding.

    Returns:
        ``(B,)`` unreduced loss.
    """
    return -(per_token_logps * mask).sum(dim=-1) * advantages.detach()
