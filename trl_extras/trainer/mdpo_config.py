"""Configuration for :class:`~trl_extras.trainer.mdpo_trainer.MDPOTrainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DPOConfig

from .._distributed import check_process_group
from ..image_corruption import ImageCorruption
from ..validation import check_config

__all__ = ["MDPOConfig"]


@dataclass
class MDPOConfig(DPOConfig):
    r"""
    Configuration class for the [`~trl_extras.MDPOTrainer`] (mDPO, [arXiv:2406.11839](https://arxiv.org/abs/2406.11839)).

    Inherits every parameter of [`~trl.DPOConfig`]; the DPO part of the mDPO loss is DPOTrainer's, for any
    `loss_type`. Only the parameters added here are listed; `conditional_weight=0` and `anchor_weight=0` give plain
    DPO. mDPO trains vision-language models only, so `truncation_mode="keep_end"` with a `max_length` (it cuts the
    image tokens off the front, huggingface/trl#5285) and `precompute_ref_log_probs=True` are refused.

    Parameters:
        > Parameters that control the mDPO objective

        conditional_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the conditional preference loss L_CoPO (the chosen response with the true image preferred over
            the same response with a corrupted image). Paper: 1.0. `0` turns the term and the corrupted rows off.
        anchor_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the anchored preference loss L_AncPO, which keeps the chosen response's implicit reward above
            `anchor`. Paper: 1.0.
        anchor (`float`, *optional*, defaults to `0.0`):
            Reward threshold delta of the anchor loss `-log sigmoid(r(m, q, y_w) - delta)`. Paper: 0.

        > Parameters that control the image corruption m' of the conditional term

        corruption_crop_min_area (`float`, *optional*, defaults to `0.01`):
            Smallest fraction of the image area kept by the random crop (resized back to full size).
        corruption_crop_max_area (`float`, *optional*, defaults to `0.2`):
            Largest fraction of the image area kept by the random crop. Paper: 0.2 ("crop 0-20%"). Set both crop
            areas to `1.0` to disable cropping.
        corruption_mask_fraction (`float`, *optional*, defaults to `0.0`):
            Fraction of the image (cells of a grid) blacked out after cropping. `0` disables masking.
        corruption_mask_grid (`int`, *optional*, defaults to `8`):
            Cells per side of the masking grid used by `corruption_mask_fraction`.
        corruption_noise_std (`float`, *optional*, defaults to `0.0`):
            Standard deviation of Gaussian pixel noise added last, as a fraction of the pixel range (1.0 = 255
            levels). `0` disables noise.
        corruption_seed (`int`, *optional*):
            Seed of the corruption's random generator. Defaults to `seed`.
    """

    # > mDPO objective
    conditional_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the conditional preference loss L_CoPO (chosen response with the true image preferred "
            "over the same response with a corrupted image). Paper: 1.0. 0 turns the term and the corrupted forward off."
        },
    )
    anchor_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the anchored preference loss L_AncPO, which keeps the chosen response's implicit reward "
            "above `anchor`. Paper: 1.0."
        },
    )
    anchor: float = field(
        default=0.0,
        metadata={"help": "Reward threshold delta of the anchor loss -log sigmoid(r(m, q, y_w) - delta). Paper: 0."},
    )

    # > Image corruption m' for the conditional term
    corruption_crop_min_area: float = field(
        default=0.01,
        metadata={"help": "Smallest fraction of the image area kept by the random crop (resized back to full size)."},
    )
    corruption_crop_max_area: float = field(
        default=0.2,
        metadata={
            "help": "Largest fraction of the image area kept by the random crop. Paper: 0.2 ('crop 0-20%'). Set both "
            "crop areas to 1.0 to disable cropping."
        },
    )
    corruption_mask_fraction: float = field(
        default=0.0,
        metadata={"help": "Fraction of the image (cells of a grid) blacked out after cropping. 0 disables masking."},
    )
    corruption_mask_grid: int = field(
        default=8, metadata={"help": "Cells per side of the masking grid used by `corruption_mask_fraction`."}
    )
    corruption_noise_std: float = field(
        default=0.0,
        metadata={
            "help": "Std of Gaussian pixel noise added last, as a fraction of the pixel range (1.0 = 255 levels). "
            "0 disables noise."
        },
    )
    corruption_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the corruption's random generator. Defaults to `seed`."},
    )

    def __post_init__(self):
        check_config(self)  # field values no trainer can use (beta <= 0, loss_type, lengths, batch sizes)
        for name in ("conditional_weight", "anchor_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"MDPOConfig.{name} must be a finite number >= 0, got {value!r}.")
        if not math.isfinite(self.anchor):
            raise ValueError(f"MDPOConfig.anchor must be finite, got {self.anchor!r}.")
        if not 0.0 < self.corruption_crop_min_area <= self.corruption_crop_max_area <= 1.0:
            raise ValueError(
                "MDPOConfig.corruption_crop_min_area and corruption_crop_max_area must satisfy "
                f"0 < min <= max <= 1, got min={self.corruption_crop_min_area}, max={self.corruption_crop_max_area}."
            )
        if not 0.0 <= self.corruption_mask_fraction <= 1.0:
            raise ValueError(
                f"MDPOConfig.corruption_mask_fraction must be in [0, 1], got {self.corruption_mask_fraction}."
            )
        if self.corruption_mask_grid < 1:
            raise ValueError(f"MDPOConfig.corruption_mask_grid must be >= 1, got {self.corruption_mask_grid}.")
        if self.corruption_noise_std < 0.0:
            raise ValueError(f"MDPOConfig.corruption_noise_std must be >= 0, got {self.corruption_noise_std}.")
        if self.truncation_mode == "keep_end" and self.max_length is not None:
            raise ValueError(
                "MDPOConfig.truncation_mode='keep_end' is not supported: mDPO trains vision-language models, whose "
                "image tokens sit at the start of the sequence, so keep_end truncation would silently drop them "
                "(huggingface/trl#5285). Use truncation_mode='keep_start' or max_length=None."
            )
        if self.precompute_ref_log_probs:
            raise ValueError(
                "MDPOConfig.precompute_ref_log_probs=True is not supported: vision-language batches are processed on "
                "the fly and the corrupted images are drawn anew each step. Set precompute_ref_log_probs=False."
            )
        super().__post_init__()
        check_process_group(self)  # several launched processes must form one group
        if self.corruption_seed is None:
            self.corruption_seed = self.seed

    @property
    def image_corruption(self) -> ImageCorruption:
        """The :class:`~trl_extras.image_corruption.ImageCorruption` these fields describe."""
        return ImageCorruption(
            crop_min_area=self.corruption_crop_min_area,
            crop_max_area=self.corruption_crop_max_area,
            mask_fraction=self.corruption_mask_fraction,
            mask_grid=self.corruption_mask_grid,
            noise_std=self.corruption_noise_std,
        )
