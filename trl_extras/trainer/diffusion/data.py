"""`DiffusionDPOTrainer`'s dataset checks, run before any model is loaded: image pairs through the shared data layer
(`trl_extras.data.validate_image_pair_dataset`), or, in online mode, prompts."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from .._init import validate_datasets

if TYPE_CHECKING:
    from ..diffusion_dpo_config import DiffusionDPOConfig

__all__ = ["check_datasets", "validate_pairs", "validate_prompts"]


def check_datasets(train_dataset: Any, eval_dataset: Any, args: DiffusionDPOConfig, online: bool) -> tuple[Any, Any]:
    """``(train_dataset, eval_dataset)`` checked and normalised; ``eval_dataset`` may be a dict of named splits.
    Online mode (``reward_funcs`` given) trains on prompts and may evaluate on image pairs."""
    check = partial(validate_prompts, validate_pairs=validate_pairs) if online else validate_pairs
    check = partial(check, args=args)
    columns = set(getattr(train_dataset, "column_names", None) or [])
    if online and {"chosen", "jpg_0"} & columns:
        raise ValueError(
            "`reward_funcs` given: online Diffusion-DPO samples its own images and trains on prompts, but the "
            f"train dataset has image-pair columns {sorted(columns)}. Pass prompts only (e.g. "
            "`dataset.select_columns(['caption'])`), or drop `reward_funcs` to train on these pairs."
        )
    return validate_datasets(check, train_dataset, eval_dataset, every=True)


def validate_pairs(dataset, args: DiffusionDPOConfig):
    """Check and normalise an image preference dataset with the shared data layer (``datasets.Dataset`` and
    ``IterableDataset``; other datasets are used as they are)."""
    from datasets import Dataset, IterableDataset

    from ...data import validate_image_pair_dataset

    if args.cache_latents and not isinstance(dataset, Dataset):
        raise TypeError(
            f"DiffusionDPOConfig.cache_latents=True needs `datasets.Dataset`s (it maps them once), got "
            f"{type(dataset).__name__}."
        )
    if not isinstance(dataset, (Dataset, IterableDataset)):
        return dataset
    return validate_image_pair_dataset(
        dataset, ties=args.ties, on_invalid="raise", allow_size_mismatch=args.allow_size_mismatch
    )


def validate_prompts(dataset, args: DiffusionDPOConfig, validate_pairs):
    """Online mode: a dataset of prompts, a string column ``prompt`` or ``caption`` (or of image pairs, for
    evaluation, checked as in offline mode)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None and {"chosen", "jpg_0"} & set(columns):
        return validate_pairs(dataset, args)
    if columns is not None and not {"prompt", "caption"} & set(columns):
        raise ValueError(
            f"Online Diffusion-DPO (`reward_funcs` given) needs a dataset of prompts with a 'prompt' or 'caption' "
            f"column; this one has {columns}."
        )
    return dataset
