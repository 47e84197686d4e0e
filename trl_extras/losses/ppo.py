"""PPO maths for RLHF: per-token rewards, KL control, GAE, whitening and the clipped policy and value losses.

The classic actor-critic RLHF objective (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593; Ouyang et al. 2022,
https://arxiv.org/abs/2203.02155) with PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) and GAE
(Schulman et al. 2015, https://arxiv.org/abs/1506.02438), as laid out in "The N Implementation Details of RLHF with
PPO" (Huang et al. 2024, https://arxiv.org/abs/2403.17031). A completion ``y = (y_1 .. y_T)`` of prompt ``x`` is one
episode; token ``t`` is the action taken in state ``s_t = (x, y_<t)``.

1. Per-token reward: the KL penalty against the reference policy at every token, the sequence score at the last::

       r_t = -beta * KL_t + 1[t = T] * score(x, y),   KL_t = log pi_old(y_t | s_t) - log pi_ref(y_t | s_t)   (k1)

2. GAE, with ``V(s_{T+1}) = 0`` (the episode ends at the last token)::

       delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),   A_t = sum_l (gamma * lam)^l * delta_{t+l},   R_t = A_t + V(s_t)

   and the advantages are whitened over the batch's tokens.
3. PPO-clip policy loss, with ``rho_t = pi_theta(y_t | s_t) / pi_old(y_t | s_t)``::

       L^pi_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))

4. Clipped value loss::

       L^V_t = 1/2 * max((V_t - R_t)^2, (clip(V_t, V^old_t - eps_v, V^old_t + eps_v) - R_t)^2)

   and the trainer minimises ``mean_t L^pi_t + vf_coef * mean_t L^V_t`` over the completion tokens.
5. Adaptive KL controller (Ziegler et al. 2019, section 2.2), when a target KL is set::

       e = clip(KL / KL_target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n / horizon)

   with ``KL`` the mean sequence KL of a rollout batch of ``n`` episodes.

Every function is pure; losses are returned unreduced so that the trainer chooses the reduction. Shapes: ``B``
completions, ``T`` completion tokens (right-padded); ``mask`` is 1 on real completion tokens, 0 on padding, and is
contiguous from the first token (what generation produces).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .masked import masked_mean

__all__ = [
    "KLController",
    "gae_advantages_and_returns",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_kl",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
]

KL_ESTIMATORS = ("k1", "k3")


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked positions, Bessel-corrected when ``unbiased`` (0 with fewer than 2)."""
    mask = mask.to(x.dtype)
    count = mask.sum()
    mean = (x * mask).sum() / count.clamp(min=1.0)
    var = (((x - mean) ** 2) * mask).sum() / count.clamp(min=1.0)
    if unbiased:
        var = torch.where(count > 1, var * count / (count - 1).clamp(min=1.0), torch.zeros_like(var))
    return var


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its masked positions; padding comes back as 0.

    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back (only the scale changes),
    which is how rewards are whitened. ``mean`` and ``var`` replace the statistics of ``x`` when given (the trainer
    passes those of every process's tokens, so that the batch is whitened as one).

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)``.
        mean, var: scalars, or ``None`` for ``masked_mean(x, mask, dim=None)`` and ``masked_var(x, mask)``.

    Returns:
        ``(B, T)``.
    """
    mean = masked_mean(x, mask, dim=None) if mean is None else mean
    var = masked_var(x, mask) if var is None else var
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Mean and unbiased variance of ``x`` over its masked positions, as ``masked_mean`` and ``masked_var`` compute
    them, with the sums taken over every process: ``reduce_sum`` adds a tensor over processes (the trainer passes
    ``accelerator.reduce(t, reduction="sum")``; ``None``: this process only). A rollout split over processes is then
    whitened as one batch, the same as on one process.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)``, 0/1.
        reduce_sum: ``tensor -> tensor`` of the same shape, summed over processes.

    Returns:
        ``{"mean": (), "var": ()}``, to pass to ``masked_whiten(x, mask, **moments)``; ``var`` is 0 with fewer than two
        masked positions in all.
    """
    reduce_sum = reduce_sum or (lambda t: t)
    mask = mask.to(x.dtype)
    totals = reduce_sum(torch.stack([(x * mask).sum(), mask.sum()]))
    count = totals[1]
    mean = totals[0] / count.clamp(min=1.0)
    squares = reduce_sum((((x - mean) ** 2) * mask).sum())
    var = torch.where(count > 1, squares / (count - 1).clamp(min=1.0), torch.zeros_like(squares))
    return {"mean": mean, "var": var}


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from the log-probs of the sampled tokens.

    With ``log r = log pi_ref(y_t) - log pi(y_t)`` (http://joschu.net/blog/kl-approx.html):
    ``k1 = -log r`` (unbiased) and ``k3 = (r - 1) - log r`` (unbiased, non-negative, lower variance).

    Args:
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the sampling policy.
        ref_logprobs: ``(B, T)`` the same under the reference policy.

    Returns:
        ``(B, T)``, unmasked.
    """
    log_ratio = ref_logprobs - logprobs  # (B, T)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of each token: ``-kl_coef * KL_t`` everywhere, plus the sequence score on the last real token.

    Args:
        scores: ``(B,)`` sequence scores (reward model or reward functions, after any EOS penalty).
        kl: ``(B, T)`` per-token KL estimates.
        mask: ``(B, T)`` completion mask, contiguous from position 0.
        kl_coef: the KL coefficient ``beta``.

    Returns:
        ``(rewards, non_score_rewards)``, both ``(B, T)`` and 0 on padding. A row with no real token gets no score.
    """
    mask = mask.to(kl.dtype)
    non_score_rewards = -kl_coef * kl * mask  # (B, T)
    lengths = mask.sum(dim=1).long()  # (B,)
    last = (lengths - 1).clamp(min=0)  # (B,) index of the last real token
    score_at_end = torch.zeros_like(non_score_rewards)
    score_at_end[torch.arange(kl.size(0), device=kl.device), last] = scores.to(kl.dtype) * (lengths > 0).to(kl.dtype)
    return non_score_rewards + score_at_end, non_score_rewards


def gae_advantages_and_returns(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the completion tokens, with the episode ending at the last real token.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V = 0`` after the last real token),
    ``A_t = delta_t + gamma * lam * A_{t+1}``, ``R_t = A_t + V_t``.

    Args:
        rewards: ``(B, T)`` per-token rewards.
        values: ``(B, T)`` ``V(s_t)`` of the state each token was sampled in.
        mask: ``(B, T)`` completion mask, contiguous from position 0.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 on padding. Not whitened.
    """
    mask = mask.to(values.dtype)
    rewards = rewards * mask
    values = values * mask
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip surrogate per token, ``max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))``, to be minimised.

    Args:
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the current policy (with gradient).
        old_logprobs: ``(B, T)`` the same under the policy that sampled them.
        advantages: ``(B, T)``.
        cliprange: ``eps``.

    Returns:
        ``(loss, clipped, ratio)``, all ``(B, T)`` and unmasked: the per-token loss, whether the clipped term was the
        larger one (the "clip fraction" counts these), and ``rho``.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return torch.maximum(unclipped, clipped), clipped > unclipped, ratio


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss per token, ``1/2 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)``.

    Args:
        values: ``(B, T)`` current value predictions (with gradient).
        old_values: ``(B, T)`` value predictions at rollout time.
        returns: ``(B, T)`` GAE returns.
        cliprange_value: ``eps_v``.

    Returns:
        ``(loss, clipped)``, both ``(B, T)`` and unmasked.
    """
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), clipped_loss > unclipped_loss


@dataclass
class KLController:
    """The KL coefficient ``beta``: fixed, or adaptive towards ``target`` (Ziegler et al. 2019, section 2.2).

    Attributes:
        value: the current coefficient.
        target: the target mean sequence KL; ``None`` keeps ``value`` fixed.
        horizon: episodes over which the coefficient moves by at most ``exp(0.2)``-ish: each update scales
            ``value`` by ``1 + clip(kl / target - 1, -0.2, 0.2) * n_episodes / horizon``.
    """

    value: float
    target: float | None = None
    horizon: float = 10000.0

    def update(self, current_kl: float, n_episodes: int) -> float:
        """Move ``value`` after a rollout batch of ``n_episodes`` whose mean sequence KL was ``current_kl``."""
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_episodes / self.horizon
        return self.value
