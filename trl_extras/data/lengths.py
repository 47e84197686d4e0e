"""Tokenised preference pairs against ``max_length``: rows that would be dropped and completions that would be cut.

TRL's ``DPOTrainer`` drops, without a word, every row whose prompt alone fills ``max_length`` (``keep_start``), and
its collator cuts every longer ``prompt + completion`` to ``max_length`` tokens, also without a word. When every row
is dropped the run dies in torch (``num_samples=0``). `check_preference_lengths` counts both before training:

- rows whose prompt leaves no completion token are an error naming the count and the longest prompt, unless
  ``drop_long_prompts=True``, which drops them with a warning giving the count;
- completions that will be cut are a warning giving the count and the longest lengths.

TRL's ``RewardTrainer`` drops, also without a word, every pair whose chosen or rejected sequence is longer than
``max_length`` (it never truncates). `check_reward_pair_lengths` drops the same pairs with a warning giving the count,
and raises when none would be left.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset

from .errors import PreferenceDataError, logger

__all__ = ["check_preference_lengths", "check_reward_pair_lengths"]

_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
_DROP_HINT = (
    "Raise max_length (or set it to None), shorten the prompts, or set drop_long_prompts=True to drop these rows "
    "(they are counted in a warning)."
)


def check_preference_lengths(
    dataset: Dataset | IterableDataset,
    *,
    max_length: int | None,
    truncation_mode: str = "keep_start",
    drop_long_prompts: bool = False,
    name: str = "train",
) -> Dataset | IterableDataset:
    """Check a tokenised preference dataset (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) against
    ``max_length`` as TRL's DPO collator truncates it; return it without the rows that must go.

    With ``truncation_mode="keep_start"`` a row whose prompt has ``max_length`` tokens or more keeps no completion
    token: a ``PreferenceDataError`` (naming how many rows, and the longest prompt and its row), or with
    ``drop_long_prompts=True`` a warning and the row dropped. Rows whose ``prompt + completion`` is longer than
    ``max_length`` are cut (the end of the completion for ``keep_start``, the start of the prompt for ``keep_end``):
    a warning with the count and the longest lengths. An ``IterableDataset`` is checked row by row as it is iterated
    (long prompts raise, or are dropped silently with ``drop_long_prompts=True``; cut completions are not counted).
    """
    if max_length is None:
        return dataset
    if isinstance(dataset, IterableDataset):
        return _check_lazily(dataset, max_length, truncation_mode, drop_long_prompts, name)
    if not isinstance(dataset, Dataset) or len(dataset) == 0 or not set(_COLUMNS) <= set(dataset.column_names):
        return dataset
    table = dataset.with_format("arrow", columns=list(_COLUMNS))[:]
    prompt, chosen, rejected = (
        pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False) for column in _COLUMNS
    )
    total = len(prompt)
    keep = np.ones(total, dtype=bool)
    if truncation_mode == "keep_start":
        long = prompt >= max_length
        if long.any():
            row = int(np.argmax(prompt))
            got = (
                f"{int(long.sum())} of {total} rows with a prompt of {max_length} tokens or more (longest: "
                f"{int(prompt[row])} tokens, row {row}), which would leave them no completion token"
            )
            if not drop_long_prompts or long.all():
                hint = _DROP_HINT if not long.all() else "Raise max_length (or set it to None) or shorten the prompts."
                raise PreferenceDataError(
                    f"prompts shorter than max_length={max_length} tokens",
                    got,
                    column="prompt",
                    hint=f"[{name}] {hint}",
                )
            logger.warning(
                f"{name} dataset: dropped {int(long.sum())} of {total} rows whose prompt has max_length={max_length} "
                f"tokens or more (longest: {int(prompt[row])} tokens, row {row}); drop_long_prompts=True."
            )
            keep = ~long
    _warn_cut(prompt[keep], chosen[keep], rejected[keep], total, max_length, truncation_mode, name)
    return dataset if keep.all() else dataset.select(np.flatnonzero(keep))


def _warn_cut(prompt, chosen, rejected, total, max_length, truncation_mode, name) -> None:
    cut = np.maximum(prompt + chosen, prompt + rejected) > max_length
    if not cut.any():
        return
    what = (
        "the end of the completions (keep_start keeps the first max_length tokens)"
        if truncation_mode == "keep_start"
        else "the start of the sequences (keep_end keeps the last max_length tokens: the prompt's start first)"
    )
    logger.warning(
        f"{name} dataset: max_length={max_length} cuts {what} in {int(cut.sum())} of {total} rows; longest "
        f"prompt + chosen: {int((prompt + chosen).max())} tokens, prompt + rejected: {int((prompt + rejected).max())} "
        f"tokens, longest prompt: {int(prompt.max())} tokens. Raise max_length to train on whole completions."
    )


def _check_lazily(dataset, max_length, truncation_mode, drop_long_prompts, name):
    if truncation_mode != "keep_start":
        return dataset
    if drop_long_prompts:
        return dataset.filter(lambda row: len(row["prompt_ids"]) < max_length)

    def check(row, index):
        if len(row["prompt_ids"]) >= max_length:
            got = f"a prompt of {len(row['prompt_ids'])} tokens, which would leave no completion token"
            raise PreferenceDataError(
                f"a prompt shorter than max_length={max_length} tokens", got, index, "prompt", f"[{name}] {_DROP_HINT}"
            )
        return row

    return dataset.map(check, with_indices=True)


def check_reward_pair_lengths(
    dataset: Dataset | IterableDataset, *, max_length: int | None, name: str = "train"
) -> Dataset | IterableDataset:
    """Drop, as TRL's ``RewardTrainer`` does, the tokenised pairs (``chosen_ids``, ``rejected_ids``) whose chosen or
    rejected sequence is longer than ``max_length``, with a warning giving the count and the longest pair; a
    ``PreferenceDataError`` when that would leave no pair. An ``IterableDataset`` is filtered as it is read (it cannot
    be counted in advance), with a warning saying so."""
    if max_length is None:
        return dataset

    def fits(row) -> bool:
        return len(row["chosen_ids"]) <= max_length and len(row["rejected_ids"]) <= max_length

    if isinstance(dataset, IterableDataset):
        logger.warning(
            f"{name} dataset (streaming): pairs whose chosen or rejected sequence is longer than "
            f"max_length={max_length} tokens are dropped as they are read, uncounted."
        )
        return dataset.filter(fits)
    columns = ["chosen_ids", "rejected_ids"]
    if not isinstance(dataset, Dataset) or len(dataset) == 0 or not set(columns) <= set(dataset.column_names):
        return dataset
    table = dataset.with_format("arrow", columns=columns)[:]
    longer = np.maximum(
        *(pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False) for column in columns)
    )
    long = longer > max_length
    if not long.any():
        return dataset
    total, row = len(longer), int(np.argmax(longer))
    got = f"{int(long.sum())} of {total} pairs longer (longest: {int(longer[row])} tokens, row {row})"
    if long.all():
        raise PreferenceDataError(
            f"pairs whose chosen and rejected sequences fit in max_length={max_length} tokens",
            got,
            column="chosen",
            hint=f"[{name}] Raise max_length (or set it to None) or shorten the sequences.",
        )
    logger.warning(
        f"{name} dataset: dropped {int(long.sum())} of {total} pairs whose chosen or rejected sequence is longer than "
        f"max_length={max_length} tokens (longest: {int(longer[row])} tokens, row {row}), as TRL's RewardTrainer "
        "does. Raise max_length (or set it to None) to train on them."
    )
    return dataset.select(np.flatnonzero(~long))
