"""What every trl-extras trainer's ``__init__`` does before handing its arguments to the TRL parent.

TRL's own subclasses (``trl.experimental.gmpo.GMPOTrainer``) take ``(model, reward_funcs, args=None, **kwargs)``
and build a default config named after the model; ours do the same, and in addition refuse a parent config (a
``DPOConfig`` given to ``UnlikelihoodTrainer`` would silently train with the parent's objective) and check the
datasets with the shared data layer before TRL tokenises them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from datasets import Dataset
from trl.trainer.utils import get_config_model_id

ConfigT = TypeVar("ConfigT")


def resolve_args(
    args: Any,
    config_class: type[ConfigT],
    model: Any,
    trainer_name: str,
    suffix: str,
    instance_name: str | None = None,
) -> ConfigT:
    """``args``, or a default ``config_class`` whose ``output_dir`` is ``<model name>-<suffix>`` (TRL's convention):
    the last part of ``model``'s path, or for a model object its config's ``_name_or_path``, or ``instance_name``
    when given (a loaded diffusers pipeline is named ``pipeline``).

    Raises ``TypeError`` naming the expected class when ``args`` is another config (e.g. the parent's)."""
    if args is None:
        if isinstance(model, str):
            model_name = model
        else:
            model_name = instance_name if instance_name is not None else get_config_model_id(model.config)
        return config_class(f"{str(model_name).rstrip('/').split('/')[-1]}-{suffix}")
    if not isinstance(args, config_class):
        parent = next((c.__name__ for c in config_class.__mro__[1:] if c.__name__.endswith("Config")), "the parent")
        raise TypeError(
            f"{trainer_name} needs `args` to be a {config_class.__name__}, got {type(args).__name__}. "
            f"{config_class.__name__} accepts every {parent} field: replace `{type(args).__name__}(...)` by "
            f"`{config_class.__name__}(...)`."
        )
    return args


def validate_datasets(check: Callable[[Any], Any], *datasets: Any, every: bool = False) -> tuple[Any, ...]:
    """Each dataset passed through ``check`` (a ``trl_extras.data`` validator that raises naming the row and column,
    and returns the dataset normalised); ``dict`` values (named eval splits) one by one; ``None`` unchanged, and
    streaming and other datasets too (they cannot be scanned up front) unless ``every``: then ``check`` gets them
    and handles them itself (Diffusion-DPO validates streamed image pairs as they are read)."""

    def one(dataset):
        if isinstance(dataset, dict):
            return {name: one(split) for name, split in dataset.items()}
        return check(dataset) if isinstance(dataset, Dataset) or (every and dataset is not None) else dataset

    return tuple(one(dataset) for dataset in datasets)
