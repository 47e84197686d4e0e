"""Padding and truncation shared by the collators.

- ``pad_sequences``: ragged id lists (or tensors) -> one padded tensor, either side, optionally to a multiple of ``n``.
  It is TRL's ``trl.trainer.utils.pad`` with list inputs and the checks a collator wants.
- ``truncate``: cut one sequence to ``max_length`` keeping its start or its end.
- ``truncate_preference_pair``: cut a ``(prompt, chosen, rejected)`` triple to ``max_length`` so that chosen and
  rejected keep the same prompt, the completion is never cut by ``keep_end``, and tokens that must stay together
  (an image placeholder) are never cut; problems raise ``PreferenceDataError`` naming the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from trl.trainer.utils import pad

from ..data.errors import PreferenceDataError

__all__ = ["PADDING_SIDES", "TRUNCATION_MODES", "pad_sequences", "truncate", "truncate_preference_pair"]

#: ``keep_start`` keeps the first ``max_length`` tokens (cuts the end), ``keep_end`` keeps the last ones (cuts the
#: start). The names are TRL's.
TRUNCATION_MODES = ("keep_start", "keep_end")
PADDING_SIDES = ("right", "left")

_ROW_HINT = "The row is the example's position in the batch handed to the collator."


def check_option(name: str, value, allowed: Sequence) -> None:
    """Raise ``ValueError`` naming the option when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}, got {value!r}.")


def check_positive(name: str, value: int | None) -> None:
    """Raise ``ValueError`` naming the option when ``value`` is set but not a positive integer."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"`{name}` must be a positive integer or None, got {value!r}.")


def pad_sequences(
    sequences: Sequence[Sequence[int] | torch.Tensor],
    padding_value: int | float = 0,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Pad ``sequences`` along their first dimension into one ``(len(sequences), length, ...)`` tensor.

    ``length`` is the longest sequence, rounded up to a multiple of ``pad_to_multiple_of`` when set. Lists become
    ``dtype`` tensors (``torch.long`` by default); tensors keep their dtype unless ``dtype`` is given.

    >>> pad_sequences([[1, 2, 3], [4]], padding_value=0, padding_side="left", pad_to_multiple_of=4)
    tensor([[0, 1, 2, 3],
            [0, 0, 0, 4]])
    """
    check_option("padding_side", padding_side, PADDING_SIDES)
    check_positive("pad_to_multiple_of", pad_to_multiple_of)
    if len(sequences) == 0:
        raise ValueError("`pad_sequences` needs at least one sequence.")
    tensors = [
        s if isinstance(s, torch.Tensor) else torch.tensor(list(s), dtype=dtype or torch.long) for s in sequences
    ]
    if dtype is not None:
        tensors = [t.to(dtype) for t in tensors]
    return pad(tensors, padding_value=padding_value, padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of)


def truncate(sequence: Sequence, max_length: int | None, mode: str = "keep_start") -> Sequence:
    """Cut ``sequence`` to at most ``max_length`` items: ``keep_start`` keeps the first ones, ``keep_end`` the last.

    ``max_length=None`` returns the sequence unchanged. Works on lists and tensors (first dimension).
    """
    check_option("truncation_mode", mode, TRUNCATION_MODES)
    if max_length is None or len(sequence) <= max_length:
        return sequence
    return sequence[:max_length] if mode == "keep_start" else sequence[len(sequence) - max_length :]


def truncate_preference_pair(
    prompt: Sequence[int],
    chosen: Sequence[int],
    rejected: Sequence[int],
    *,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    protected_span: tuple[int, int] | None = None,
    row: int | None = None,
) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
    """Truncate one preference pair; both of its sequences are ``prompt + chosen`` and ``prompt + rejected``.

    In this order:

    1. ``max_prompt_length``: keep the last ``max_prompt_length`` prompt tokens (the ones next to the completion).
    2. ``max_completion_length``: keep the first ``max_completion_length`` tokens of each completion.
    3. ``max_length`` bounds each full sequence:

       - ``keep_start`` keeps the first ``max_length`` tokens: the completions lose their ends. Same result as TRL's
         ``DataCollatorForPreference``. A prompt of ``max_length`` tokens or more would leave no completion token to
         learn from: that raises (TRL's trainer filters such rows out of text datasets before collating).
       - ``keep_end`` cuts the start of the prompt and never the completion. The prompt is cut once for the pair, by
         as much as the longer completion needs, so chosen and rejected keep the same prompt (TRL cuts each
         sequence on its own). A completion that alone fills ``max_length`` raises instead of being cut.

    ``protected_span = (start, stop)`` marks prompt tokens ``prompt[start:stop]`` that must not be cut (an image
    placeholder, whose tokens must match the image features); a cut into it raises ``PreferenceDataError``.

    Returns the truncated ``(prompt, chosen, rejected)``. Errors are ``PreferenceDataError`` naming ``row``.
    """
    check_option("truncation_mode", truncation_mode, TRUNCATION_MODES)
    for name, value in (
        ("max_length", max_length),
        ("max_prompt_length", max_prompt_length),
        ("max_completion_length", max_completion_length),
    ):
        check_positive(name, value)

    def cut_prompt_start(prompt, keep: int, reason: str):
        removed = len(prompt) - keep
        if removed <= 0:
            return prompt
        if protected_span is not None and removed > protected_span[0]:
            raise PreferenceDataError(
                expected=f"a prompt whose image tokens survive {reason}",
                got=f"{len(prompt)} prompt tokens with image tokens at positions {protected_span[0]}.."
                f"{protected_span[1] - 1}; keeping the last {keep} would cut them",
                row=row,
                column="prompt",
                hint="Cutting image placeholder tokens desynchronises them from the image features (TRL issue "
                "5285). Raise the limit, shorten the text before the image, or drop the row. " + _ROW_HINT,
            )
        return prompt[removed:]

    if max_prompt_length is not None:
        prompt = cut_prompt_start(prompt, max_prompt_length, f"max_prompt_length={max_prompt_length}")
    chosen = truncate(chosen, max_completion_length)
    rejected = truncate(rejected, max_completion_length)
    if max_length is None:
        return prompt, chosen, rejected

    if truncation_mode == "keep_start":
        budget = max_length - len(prompt)  # completion tokens that fit after the whole prompt
        if budget <= 0:
            if protected_span is not None and max_length < protected_span[1]:
                expected = f"a prompt whose image tokens fit in max_length={max_length}"
                hint = (
                    "Cutting image placeholder tokens desynchronises them from the image features (TRL issue 5285). "
                )
            else:
                expected = f"a prompt shorter than max_length={max_length}, leaving room for the completion"
                hint = ""
            raise PreferenceDataError(
                expected=expected,
                got=f"{len(prompt)} prompt tokens; keep_start truncation would leave no completion token",
                row=row,
                column="prompt",
                hint=hint + "Raise max_length, set max_prompt_length, or drop the row. " + _ROW_HINT,
            )
        return prompt, chosen[:budget], rejected[:budget]

    longest = max(len(chosen), len(rejected))
    if longest >= max_length:
        column = "chosen" if len(chosen) >= len(rejected) else "rejected"
        raise PreferenceDataError(
            expected=f"a completion shorter than max_length={max_length}, since keep_end never cuts the completion",
            got=f"{longest} completion tokens, leaving no room for the prompt",
            row=row,
            column=column,
            hint="Raise max_length, or set max_completion_length below it to cut long completions. " + _ROW_HINT,
        )
    prompt = cut_prompt_start(prompt, max_length - longest, f"keep_end truncation to max_length={max_length}")
    return prompt, chosen, rejected
