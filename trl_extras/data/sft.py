"""Checks of the datasets TRL's ``SFTTrainer`` reads: language modelling (``text`` or ``messages``) or
prompt-completion (``prompt`` and ``completion``), optionally with images."""

from __future__ import annotations

from typing import Literal

from datasets import Dataset, IterableDataset

from ._scan import ON_INVALID, cell, check_dataset_type, check_option, column_names, scan, scan_lazily
from .checks import check_image, check_images, check_messages, show, text_check_for
from .errors import Invalid, PreferenceDataError
from .preference import _assistant_turns, cast_image_column, find_image_column

__all__ = ["validate_sft_dataset"]


def validate_sft_dataset(
    dataset: Dataset | IterableDataset,
    *,
    dataset_text_field: str = "text",
    images: Literal["required"] | None = None,
    on_invalid: Literal["raise", "drop"] = "raise",
) -> Dataset | IterableDataset:
    """Check an SFT dataset in one of TRL's formats and return it (bad rows dropped with ``on_invalid="drop"``).

    The format is read from the columns, as ``SFTTrainer`` reads it: ``prompt`` and ``completion`` (strings, or
    conversations whose completion is assistant turns, both in the same format), else ``messages`` (a
    conversation), else ``dataset_text_field`` (a non-empty string). Already tokenised data (an ``input_ids``
    column) is returned unchecked. Images (an ``images`` list or one ``image``) are checked as in
    ``validate_preference_dataset``, without matching placeholders.
    """
    check_dataset_type(dataset, "validate_sft_dataset")
    check_option("on_invalid", on_invalid, ON_INVALID)
    check_option("images", images, (None, "required"))
    columns = column_names(dataset)
    if "input_ids" in columns:
        return dataset
    features = dataset.features or {}
    if "prompt" in columns and "completion" in columns:
        text_columns = ["prompt", "completion"]
        steps = [
            *[cell(column, text_check_for(features.get(column))) for column in text_columns],
            ("completion", _same_format_as("prompt", "completion")),
            ("completion", _assistant_turns("completion")),
        ]
    elif "messages" in columns:
        text_columns = ["messages"]
        steps = [cell("messages", check_messages)]
    elif dataset_text_field in columns:
        text_columns = [dataset_text_field]
        steps = [cell(dataset_text_field, text_check_for(features.get(dataset_text_field)))]
    else:
        raise PreferenceDataError(
            f"a {dataset_text_field!r} column (language modelling), 'messages' (conversational), or 'prompt' and "
            "'completion'",
            f"only {columns}",
            column=dataset_text_field,
            hint="Rename the column, or set dataset_text_field to the column that holds the text.",
        )
    image_column = find_image_column(columns, images)
    if image_column == "images":
        steps.append(cell("images", lambda value: check_images(value, required=images == "required")))
    elif image_column == "image":
        steps.append(cell("image", check_image))
    name = "validate_sft_dataset"
    if isinstance(dataset, IterableDataset):
        return scan_lazily(
            dataset,
            steps,
            name=name,
            on_invalid=on_invalid,
            output_columns=columns,
            image_columns=[image_column] if image_column else [],
        )
    needed = [*text_columns, *([image_column] if image_column else [])]
    result = scan(dataset, needed, steps, name=name, on_invalid=on_invalid)
    return cast_image_column(result.kept_rows(dataset), image_column)


def _same_format_as(first: str, second: str):
    def check(row):
        if isinstance(row[first], list) != isinstance(row[second], list):
            kind = "a list of messages" if isinstance(row[first], list) else "a string"
            raise Invalid(f"the same format as {first!r} ({kind})", show(row[second]))

    return check
