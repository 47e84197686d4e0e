"""Sums and means over the positions a mask keeps: the one definition every loss module uses.

``dim`` is always explicit: ``None`` reduces over every position (a batch's token mean), an int reduces along that
dimension (e.g. ``-1``: one value per sequence). Masked-out positions are never read (``torch.where``, not a
product), so padding that holds ``-inf`` or NaN (log-probabilities of pad tokens) cannot leak into the result.
"""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "masked_sum"]


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set, along ``dim`` (``None``: all positions). ``(B, T) -> (B,)`` for
    ``dim=-1``, a scalar for ``dim=None``."""
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set, along ``dim`` (``None``: all positions); 0 where no position is
    set."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)
