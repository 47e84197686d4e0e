"""Batches of tokenised preference pairs for ``DPOTrainer`` and its subclasses.

```python
from trl_extras.collators import PreferenceCollator

collator = PreferenceCollator(pad_token_id=0, max_length=5, truncation_mode="keep_end", pad_to_multiple_of=4)
batch = collator([{"prompt_ids": [1, 2, 3, 4], "chosen_ids": [5, 6], "rejected_ids": [7]}])
batch["input_ids"]        # tensor([[2, 3, 4, 5, 6, 0, 0, 0], [2, 3, 4, 7, 0, 0, 0, 0]])
batch["completion_mask"]  # tensor([[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]])
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin

from ..data.errors import PreferenceDataError
from .utils import (
    PADDING_SIDES,
    TRUNCATION_MODES,
    check_option,
    check_positive,
    pad_sequences,
    truncate_preference_pair,
)

__all__ = ["PreferenceCollator"]

_ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


@dataclass
class PreferenceCollator(DataCollatorMixin):
    """Collate tokenised preference pairs into the padded batch TRL's ``DPOTrainer`` consumes.

    Each example is a row of the dataset ``DPOTrainer._prepare_dataset`` produces: ``prompt_ids``, ``chosen_ids`` and
    ``rejected_ids`` (lists of token ids), optionally ``ref_chosen_logps`` / ``ref_rejected_logps`` (floats, from
    ``precompute_ref_log_probs=True``). For a batch of ``B`` pairs the collator returns:

    - ``input_ids`` ``(2B, L)``: rows ``0..B-1`` are ``prompt + chosen``, rows ``B..2B-1`` are ``prompt + rejected``,
      padded with ``pad_token_id``;
    - ``attention_mask`` ``(2B, L)``: 1 on real tokens, 0 on padding;
    - ``completion_mask`` ``(2B, L)``: 1 on completion tokens, 0 on prompt and padding;
    - ``ref_chosen_logps`` / ``ref_rejected_logps`` ``(B,)``, when the examples carry them.

    ``L`` is the longest sequence after truncation, rounded up to ``pad_to_multiple_of``. This is the layout of TRL's
    ``DataCollatorForPreference``, so the collator is a drop-in ``data_collator=`` for ``DPOTrainer`` and subclasses
    such as ``trl_extras.UnlikelihoodTrainer``. Added over TRL's collator: ``padding_side``, ``max_prompt_length``,
    ``max_completion_length``, a ``keep_end`` that cuts the prompt once per pair and never the completion, and
    errors naming the row instead of rows left without a completion token.

    Args:
        pad_token_id: Token id used for padding ``input_ids``.
        max_length: Bound on each ``prompt + completion`` sequence; ``None`` disables truncation.
        truncation_mode: ``"keep_start"`` (TRL's default) keeps the first ``max_length`` tokens, cutting the end of
            the completions; a prompt that leaves no completion token raises. ``"keep_end"`` cuts the start of the
            prompt, the same amount for chosen and rejected, and never the completion; a completion that does not
            fit with at least one prompt token raises. See ``truncate_preference_pair``.
        max_prompt_length: Keep at most this many prompt tokens, the last ones; applied before ``max_length``.
        max_completion_length: Keep at most this many tokens of each completion, the first ones; applied before
            ``max_length``.
        padding_side: ``"right"`` (TRL's layout) or ``"left"``. Both give the same log-probabilities on models with
            rotary or no absolute position embeddings; left padding matters to models that read absolute positions
            from the attention mask.
        pad_to_multiple_of: Pad the sequence length up to a multiple of this (for tensor cores, or compilers that
            compile once per shape).
        return_tensors: Only ``"pt"``.

    With ``DPOTrainer``, set the truncation on the collator: the trainer does not truncate collated batches. Its own
    ``args.max_length`` still filters text rows whose prompt fills it (``keep_start``) before collation, so set it to
    ``None`` or to the same value.
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self):
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool):
            raise ValueError(f"`pad_token_id` must be an int, got {self.pad_token_id!r}.")
        check_option("truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        check_option("padding_side", self.padding_side, PADDING_SIDES)
        check_option("return_tensors", self.return_tensors, ("pt",))
        for name in ("max_length", "max_prompt_length", "max_completion_length", "pad_to_multiple_of"):
            check_positive(name, getattr(self, name))

    @classmethod
    def from_trainer_args(cls, args, pad_token_id: int, **overrides) -> PreferenceCollator:
        """The collator a ``DPOConfig`` describes (``max_length``, ``truncation_mode``, ``pad_to_multiple_of``)."""
        kwargs = dict(
            pad_token_id=pad_token_id,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )
        return cls(**{**kwargs, **overrides})

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, completion_masks = [[], []], [[], []]  # [chosen rows, rejected rows]
        for row, example in enumerate(examples):
            prompt, chosen, rejected = (_ids(example, column, row) for column in _ID_COLUMNS)
            prompt, chosen, rejected = truncate_preference_pair(
                prompt,
                chosen,
                rejected,
                max_length=self.max_length,
                truncation_mode=self.truncation_mode,
                max_prompt_length=self.max_prompt_length,
                max_completion_length=self.max_completion_length,
                row=row,
            )
            for side, completion in enumerate((chosen, rejected)):
                sequences[side].append(list(prompt) + list(completion))
                completion_masks[side].append([0] * len(prompt) + [1] * len(completion))

        sequences, completion_masks = sequences[0] + sequences[1], completion_masks[0] + completion_masks[1]
        padding = dict(padding_side=self.padding_side, pad_to_multiple_of=self.pad_to_multiple_of)
        output = {
            "input_ids": pad_sequences(sequences, padding_value=self.pad_token_id, **padding),
            "attention_mask": pad_sequences([[1] * len(s) for s in sequences], padding_value=0, **padding),
            "completion_mask": pad_sequences(completion_masks, padding_value=0, **padding),
        }
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                output[key] = torch.tensor([example[key] for example in examples], dtype=torch.float32)
        return output


def _ids(example: dict[str, Any], column: str, row: int) -> list[int]:
    if column not in example:
        raise PreferenceDataError(
            expected="a list of token ids",
            got=f"no such key (keys: {sorted(example)})",
            row=row,
            column=column,
            hint="PreferenceCollator takes tokenised rows (prompt_ids, chosen_ids, rejected_ids) as DPOTrainer "
            "prepares them; for raw text rows let DPOTrainer tokenise the dataset first.",
        )
    ids = example[column]
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise PreferenceDataError(expected="a list of token ids", got=repr(ids)[:80], row=row, column=column)
    if column != "prompt_ids" and len(ids) == 0:
        raise PreferenceDataError(
            expected="at least one completion token", got="an empty list", row=row, column=column
        )
    return list(ids)
