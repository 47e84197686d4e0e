"""Unlikelihood objectives for preference pairs, as small pure functions on per-token log-probabilities.

Two objectives, both reference-free:

- token level (Welleck et al. 2019, https://arxiv.org/abs/1908.04319: their token-level unlikelihood loss, with the
  rejected completion's tokens as the negative candidates and the chosen completion as the likelihood target):

      L = mean_t [-log p(y_w,t | x, y_w,<t)] + alpha * mean_t [-log(1 - p(y_l,t | x, y_l,<t))]

- sequence level (the "Unlikelihood" baseline of Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, section 6
  and appendix C.3):

      L = -log p(y_w | x) + alpha * log p(y_l | x)

  which is unbounded below: log p(y_l | x) -> -inf drives the loss to -inf, whatever happens to y_w.

Conventions: ``B`` pairs, ``T`` completion positions. ``*_logps`` are per-token log-probabilities ``(B, T)``;
``*_mask`` are ``(B, T)`` with 1 on completion tokens and 0 on prompt/padding. Values at masked positions are never
read (they may be anything, including 0, -inf or NaN): every function masks *before* any operation that could turn
them into inf or NaN, so neither the value nor the gradient is poisoned. Functions return one value per pair,
unreduced; the trainer averages over the batch.
"""

from __future__ import annotations

import math

import torch

from .masked import masked_mean, masked_sum

__all__ = [
    "DEFAULT_MIN_ONE_MINUS_PROB",
    "chosen_nll",
    "log1mexp",
    "masked_mean",
    "masked_sum",
    "rejected_unlikelihood",
    "sequence_logps",
    "sequence_unlikelihood_loss",
    "token_unlikelihood_loss",
]

# Lower bound on 1 - p(token) in the unlikelihood term, as in the paper's reference implementation (fairseq
# `candidate_penalty_ce_loss`, `clamp(1 - p, min=1e-5)`): one token contributes at most -log(1e-5) ~= 11.5 nats, and
# the gradient with respect to log p stays below 1e5 (finite in fp16 as well).
DEFAULT_MIN_ONE_MINUS_PROB = 1e-5


def log1mexp(logp: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(logp))`` for ``logp < 0``, accurate over the whole range (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"): ``log(-expm1(logp))`` near 0, ``log1p(-exp(logp))`` below ``-log 2``.

    Returns ``-inf`` at ``logp == 0`` and NaN above; callers clamp ``logp`` first (see ``rejected_unlikelihood``).
    Both branches are evaluated on safe inputs so ``torch.where`` never routes a NaN gradient. ``(...) -> (...)``
    """
    near_zero = logp > -math.log(2.0)
    # each branch sees a value where it is finite, whatever the other positions hold
    near = torch.where(near_zero, logp, torch.full_like(logp, -1.0))
    far = torch.where(near_zero, torch.full_like(logp, -1.0), logp)
    return torch.where(near_zero, torch.log(-torch.expm1(near)), torch.log1p(-torch.exp(far)))


def chosen_nll(chosen_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the chosen completion's tokens, per pair. ``(B, T), (B, T) -> (B,)``."""
    return -masked_mean(chosen_logps, chosen_mask, dim=-1)


def rejected_unlikelihood(
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    min_one_minus_prob: float = DEFAULT_MIN_ONE_MINUS_PROB,
) -> torch.Tensor:
    """Mean over the rejected completion's tokens of ``-log(1 - p(token))``, per pair. ``(B, T), (B, T) -> (B,)``.

    ``1 - p`` is floored at ``min_one_minus_prob`` (``log p`` capped at ``log(1 - min_one_minus_prob) < 0``), so the log is
    never taken of 0; tokens at the floor give no gradient, like the paper's implementation. Computed in float32 (or
    float64 if given) from ``log p``, never as ``1 - exp(log p)``.
    """
    if not 0.0 < min_one_minus_prob < 1.0:
        raise ValueError(f"min_one_minus_prob must be in (0, 1), got {min_one_minus_prob}")
    dtype = torch.promote_types(rejected_logps.dtype, torch.float32)
    logps = rejected_logps.to(dtype)
    mask = rejected_mask.bool()
    # masked positions (0 from the fused LM head, or anything in hand-made tensors) are replaced before the log
    logps = torch.where(mask, logps, torch.full_like(logps, -1.0))
    logps = logps.clamp(max=math.log1p(-min_one_minus_prob))
    per_token = -log1mexp(logps)  # (B, T), >= 0
    return masked_mean(per_token, mask, dim=-1)


def sequence_logps(logps: torch.Tensor, mask: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """``log p(y | x)``: sum of the completion's token log-probs, or their mean if ``length_normalize``. ``-> (B,)``"""
    return masked_mean(logps, mask, dim=-1) if length_normalize else masked_sum(logps, mask, dim=-1)


def token_unlikelihood_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    rejected_weight: float = 1.0,
    min_one_minus_prob: float = DEFAULT_MIN_ONE_MINUS_PROB,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-level unlikelihood (Welleck et al. 2019) on a preference pair.

    Returns ``(loss, chosen_term, rejected_term)``, each ``(B,)``, with
    ``loss = chosen_term + rejected_weight * rejected_term``, ``chosen_term`` the chosen completion's mean token NLL
    and ``rejected_term`` the rejected completion's mean token ``-log(1 - p)``. Bounded below by 0.
    """
    chosen_term = chosen_nll(chosen_logps, chosen_mask)
    rejected_term = rejected_unlikelihood(rejected_logps, rejected_mask, min_one_minus_prob)
    chosen_term = chosen_term.to(rejected_term.dtype)
    return chosen_term + rejected_weight * rejected_term, chosen_term, rejected_term


def sequence_unlikelihood_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    rejected_weight: float = 1.0,
    length_normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence-level unlikelihood, the DPO paper's baseline: ``-log p(y_w|x) + rejected_weight * log p(y_l|x)``.

    Returns ``(loss, chosen_term, rejected_term)``, each ``(B,)``, with ``chosen_term = -log p(y_w|x)`` and
    ``rejected_term = log p(y_l|x)`` (per-token means of both if ``length_normalize``). Unbounded below.
    """
    chosen_term = -sequence_logps(chosen_logps, chosen_mask, length_normalize)
    rejected_term = sequence_logps(rejected_logps, rejected_mask, length_normalize)
    return chosen_term + rejected_weight * rejected_term, chosen_term, rejected_term
