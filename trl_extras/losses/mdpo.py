"""mDPO's two extra objectives, as pure functions of sequence log-probabilities.

mDPO (Wang et al. 2024, "mDPO: Conditional Preference Optimization for Multimodal Large Language Models",
https://arxiv.org/abs/2406.11839) trains a vision-language model with

    L_mDPO = L_DPO + L_CoPO + L_AncPO

where, with ``m`` the image, ``m'`` a corrupted copy of it, ``q`` the question, ``y_w`` the chosen response and
``r(m, q, y) = beta * log(pi_theta(y | m, q) / pi_ref(y | m, q))`` the implicit reward,

    L_CoPO  = -log sigmoid( r(m, q, y_w) - r(m', q, y_w) )     (conditional preference: the true image beats m')
    L_AncPO = -log sigmoid( r(m, q, y_w) - delta )             (anchor: the chosen reward stays above delta)

The paper uses ``delta = 0`` and weights 1. ``L_DPO`` is DPO's own loss and is left to ``trl.DPOTrainer``.

Every function takes per-sequence log-probabilities (summed over the completion tokens), shape ``(batch,)``, and
returns an unreduced per-sequence loss of shape ``(batch,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["anchor_loss", "conditional_preference_loss", "conditional_reward_margin", "implicit_reward"]


def implicit_reward(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta * (log pi_theta(y|x) - log pi_ref(y|x))``.

    Args:
        logps: ``(batch,)`` policy log-probabilities of the responses.
        ref_logps: ``(batch,)`` reference log-probabilities of the same responses.
        beta: DPO's temperature.

    Returns:
        ``(batch,)`` rewards.
    """
    return beta * (logps - ref_logps)


def conditional_reward_margin(
    chosen_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    corrupted_chosen_logps: torch.Tensor,
    ref_corrupted_chosen_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``r(m, q, y_w) - r(m', q, y_w)``: how much more the chosen response is rewarded with the true image.

    Args:
        chosen_logps: ``(batch,)`` ``log pi_theta(y_w | m, q)``.
        ref_chosen_logps: ``(batch,)`` ``log pi_ref(y_w | m, q)``.
        corrupted_chosen_logps: ``(batch,)`` ``log pi_theta(y_w | m', q)``, the same response under the corrupted image.
        ref_corrupted_chosen_logps: ``(batch,)`` ``log pi_ref(y_w | m', q)``.
        beta: DPO's temperature.

    Returns:
        ``(batch,)`` margins; positive when the model's preference for ``y_w`` depends on the true image.
    """
    return implicit_reward(chosen_logps, ref_chosen_logps, beta) - implicit_reward(
        corrupted_chosen_logps, ref_corrupted_chosen_logps, beta
    )


def conditional_preference_loss(
    chosen_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    corrupted_chosen_logps: torch.Tensor,
    ref_corrupted_chosen_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """mDPO's conditional preference loss ``L_CoPO`` (Eq. 2 of the paper), unreduced.

    ``-log sigmoid(beta * log(pi(y_w|m,q) / pi_ref(y_w|m,q)) - beta * log(pi(y_w|m',q) / pi_ref(y_w|m',q)))``

    Args:
        chosen_logps: ``(batch,)`` ``log pi_theta(y_w | m, q)``.
        ref_chosen_logps: ``(batch,)`` ``log pi_ref(y_w | m, q)``.
        corrupted_chosen_logps: ``(batch,)`` ``log pi_theta(y_w | m', q)``.
        ref_corrupted_chosen_logps: ``(batch,)`` ``log pi_ref(y_w | m', q)``.
        beta: DPO's temperature.

    Returns:
        ``(batch,)`` per-pair losses.
    """
    margin = conditional_reward_margin(
        chosen_logps, ref_chosen_logps, corrupted_chosen_logps, ref_corrupted_chosen_logps, beta
    )
    return -F.logsigmoid(margin)


def anchor_loss(
    chosen_logps: torch.Tensor, ref_chosen_logps: torch.Tensor, beta: float, anchor: float = 0.0
) -> torch.Tensor:
    """mDPO's anchored preference loss ``L_AncPO`` (Eq. 3 of the paper), unreduced.

    ``-log sigmoid(beta * log(pi(y_w|m,q) / pi_ref(y_w|m,q)) - delta)``, with ``delta = anchor``.

    Args:
        chosen_logps: ``(batch,)`` ``log pi_theta(y_w | m, q)``.
        ref_chosen_logps: ``(batch,)`` ``log pi_ref(y_w | m, q)``.
        beta: DPO's temperature.
        anchor: The reward threshold ``delta`` (paper: 0).

    Returns:
        ``(batch,)`` per-pair losses.
    """
    return -F.logsigmoid(implicit_reward(chosen_logps, ref_chosen_logps, beta) - anchor)
