"""Configuration for :class:`~trl_extras.trainer.unlikelihood_trainer.UnlikelihoodTrainer`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from trl import DPOConfig

from .._distributed import check_process_group
from ..validation import check_config

# DPOConfig fields that only shape DPO's reference-based losses, with their defaults: the unlikelihood objectives
# never read them, so a non-default value is reported rather than silently ignored.
_UNUSED_DPO_LOSS_FIELDS = {
    "beta": 0.1,
    "loss_type": ["sigmoid"],
    "loss_weights": None,
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "label_smoothing": 0.0,
    "use_weighting": False,
}


@dataclass
class UnlikelihoodConfig(DPOConfig):
    r"""
    Configuration class for the [`~trl_extras.UnlikelihoodTrainer`].

    Inherits every parameter of [`~trl.DPOConfig`] (data processing, `max_length`, `model_init_kwargs`, ...); only
    the parameters added here are listed. The unlikelihood objectives use no reference model, so
    `precompute_ref_log_probs` and `sync_ref_model` must stay `False`; DPO's loss knobs (`beta`, `loss_type`,
    `loss_weights`, `ld_alpha`, `f_divergence_type`, `label_smoothing`, `use_weighting`) have no effect and a
    warning names any that is set.

    Parameters:
        > Parameters that control the unlikelihood objective

        unlikelihood_type (`str`, *optional*, defaults to `"token"`):
            `"token"`: mean NLL of the chosen completion's tokens plus `rejected_weight` times the mean over the
            rejected completion's tokens of `-log(1 - p(token))` (Welleck et al. 2019, bounded below by 0).
            `"sequence"`: `-log p(chosen|prompt) + rejected_weight * log p(rejected|prompt)`, the DPO paper's
            unlikelihood baseline, unbounded below and prone to degenerate text.
        rejected_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the rejected-completion term (alpha in Welleck et al.). Must be >= 0.
        length_normalize (`bool`, *optional*, defaults to `False`):
            Only for `unlikelihood_type="sequence"`: use the mean token log-prob of each completion instead of its
            sum, so long completions do not dominate the loss.
        min_one_minus_prob (`float`, *optional*, defaults to `1e-5`):
            Only for `unlikelihood_type="token"`: floor on `1 - p(token)` in the rejected term, so one token
            contributes at most `-log(min_one_minus_prob)` nats (11.5 by default) and tokens at the floor get no
            gradient. 1e-5 is the value of the paper's reference code. Must be in (0, 1).

        > Parameters that control the data

        drop_long_prompts (`bool`, *optional*, defaults to `False`):
            Rows whose prompt alone fills `max_length` keep no completion token. `False`: they are an error naming
            how many and the longest prompt. `True`: they are dropped, with a warning giving the count.
    """

    unlikelihood_type: str = field(
        default="token",
        metadata={
            "help": "'token' (default): mean NLL of the chosen completion's tokens plus `rejected_weight` times the "
            "mean over the rejected completion's tokens of -log(1 - p(token)) (Welleck et al. 2019, bounded below "
            "by 0). 'sequence': -log p(chosen|prompt) + `rejected_weight` * log p(rejected|prompt), the DPO paper's "
            "unlikelihood baseline, unbounded below and prone to degenerate text.",
            "choices": ["token", "sequence"],
        },
    )
    rejected_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the rejected-completion term (alpha in Welleck et al.). Must be >= 0."},
    )
    length_normalize: bool = field(
        default=False,
        metadata={
            "help": "Only for unlikelihood_type='sequence': use the mean token log-prob of each completion instead "
            "of its sum, so long completions do not dominate the loss."
        },
    )
    min_one_minus_prob: float = field(
        default=1e-5,
        metadata={
            "help": "Only for unlikelihood_type='token': floor on 1 - p(token) in the rejected term, so one token "
            "contributes at most -log(min_one_minus_prob) nats (11.5 by default) and tokens at the floor get no "
            "gradient. 1e-5 is the value of the paper's reference code. Must be in (0, 1)."
        },
    )

    drop_long_prompts: bool = field(
        default=False,
        metadata={
            "help": "Rows whose prompt alone fills `max_length` keep no completion token. False (default): they are "
            "an error naming how many and the longest prompt. True: they are dropped, with a warning giving the count."
        },
    )

    def __post_init__(self):
        check_config(self)  # field values no trainer can use (lengths, batch sizes, learning rate)
        if self.unlikelihood_type not in ("token", "sequence"):
            raise ValueError(
                f"UnlikelihoodConfig.unlikelihood_type must be 'token' or 'sequence', got {self.unlikelihood_type!r}."
            )
        if not (math.isfinite(self.rejected_weight) and self.rejected_weight >= 0):
            raise ValueError(
                f"UnlikelihoodConfig.rejected_weight must be a finite number >= 0, got {self.rejected_weight}."
            )
        if self.length_normalize and self.unlikelihood_type != "sequence":
            raise ValueError(
                "UnlikelihoodConfig.length_normalize only applies to unlikelihood_type='sequence' (the token-level "
                "objective is already a per-token mean); unset it or set unlikelihood_type='sequence'."
            )
        if not 0.0 < self.min_one_minus_prob < 1.0:
            raise ValueError(
                f"UnlikelihoodConfig.min_one_minus_prob must be in (0, 1), got {self.min_one_minus_prob}."
            )
        if self.precompute_ref_log_probs:
            raise ValueError(
                "UnlikelihoodConfig.precompute_ref_log_probs must be False: the unlikelihood objectives use no "
                "reference model, so there is nothing to precompute."
            )
        if self.sync_ref_model:
            raise ValueError(
                "UnlikelihoodConfig.sync_ref_model must be False: the unlikelihood objectives use no reference model."
            )
        super().__post_init__()  # normalises loss_type to a list
        check_process_group(self)  # several launched processes must form one group
        for name, default in _UNUSED_DPO_LOSS_FIELDS.items():
            if getattr(self, name) != default:
                warnings.warn(
                    f"UnlikelihoodConfig.{name}={getattr(self, name)!r} has no effect: it only shapes DPO's "
                    "reference-based losses. The unlikelihood objective is set by `unlikelihood_type`, "
                    "`rejected_weight`, `length_normalize` and `min_one_minus_prob`.",
                    UserWarning,
                    stacklevel=3,
                )
