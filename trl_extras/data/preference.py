"""Checks and normalisation of the datasets TRL's preference trainers (DPO and friends) and prompt-only RL trainers
(GRPO, RLOO, ReMax, PPO) read."""

from __future__ import annotations

from typing import Any, Literal

from datasets import Dataset, Features, IterableDataset, LargeList, List, Value
from trl.data_utils import maybe_extract_prompt, prepare_multimodal_messages

from ._scan import (
    ON_INVALID,
    Row,
    Step,
    cell,
    check_dataset_type,
    check_option,
    column_names,
    rebuild,
    require_columns,
    scan,
    scan_lazily,
)
from .checks import as_image_feature, check_image, check_images, image_count, show, text_check_for
from .errors import Invalid, PreferenceDataError, logger

COMPLETIONS = ("chosen", "rejected")
COMPLETION_ROLES = ("assistant", "tool")
_PREFERENCE_HINT = "Preference data needs 'chosen' and 'rejected' columns, and 'prompt' unless it is implicit."


def validate_preference_dataset(
    dataset: Dataset | IterableDataset,
    *,
    images: Literal["required"] | None = None,
    on_invalid: Literal["raise", "drop"] = "raise",
) -> Dataset | IterableDataset:
    """Check a preference dataset and return it with an explicit prompt.

    Accepts TRL's preference formats: standard (strings) or conversational (lists of `{"role", "content"}`
    messages), with an explicit `prompt` column or an implicit one (the shared prefix of `chosen` and `rejected`,
    extracted with TRL's `maybe_extract_prompt`), plus an `images` (list) or `image` column for vision data.

    Args:
        dataset: a `datasets.Dataset`, or an `IterableDataset` (then checked lazily as it is iterated).
        images: `None` checks an `images`/`image` column when there is one; `"required"` demands one, with at least
            one image per row.
        on_invalid: `"raise"` raises `PreferenceDataError` on the first invalid row; `"drop"` drops invalid rows and
            logs how many and why.

    Returns:
        The dataset with invalid rows dropped (`"drop"`), the prompt extracted when it was implicit, and image paths
        or bytes cast to `datasets.Image` (decoded lazily on access).

    Raises:
        PreferenceDataError: naming the row, the column and what was expected.
    """
    check_dataset_type(dataset, "validate_preference_dataset")
    check_option("on_invalid", on_invalid, ON_INVALID)
    check_option("images", images, (None, "required"))
    columns = column_names(dataset)
    require_columns(columns, COMPLETIONS, hint=_PREFERENCE_HINT)
    image_column = find_image_column(columns, images)
    features = dataset.features or {}
    extract = _ExtractPrompt() if _may_need_extraction(columns, features) else None
    steps = _preference_steps(columns, features, image_column, images, extract)
    name = "validate_preference_dataset"
    if isinstance(dataset, IterableDataset):
        output_columns = list(dict.fromkeys(["prompt", *columns]))
        prompt_feature = features.get("chosen" if extract else "prompt")
        output_features = _lazy_features(dataset, {"prompt": prompt_feature}, output_columns, image_column)
        return scan_lazily(
            dataset,
            steps,
            name=name,
            on_invalid=on_invalid,
            output_columns=output_columns,
            image_columns=[image_column] if image_column else [],
            output_features=output_features,
        )

    needed = [column for column in ("prompt", *COMPLETIONS, image_column) if column in columns]
    result = scan(dataset, needed, steps, name=name, on_invalid=on_invalid, collect=_texts if extract else None)
    if extract and extract.count:
        logger.info(f"{name}: extracted the implicit prompt of {extract.count} rows from 'chosen' and 'rejected'.")
        dataset = _replace_texts(dataset, result.kept, result.outputs, features)
    else:
        dataset = result.kept_rows(dataset)
    return cast_image_column(dataset, image_column)


def validate_prompt_dataset(
    dataset: Dataset | IterableDataset,
    *,
    images: Literal["required"] | None = None,
    on_invalid: Literal["raise", "drop"] = "raise",
) -> Dataset | IterableDataset:
    """Check a prompt-only dataset (GRPO, RLOO, ReMax, PPO): a `prompt` column holding a non-empty string or a
    conversation, and optionally images (as in `validate_preference_dataset`). Other columns (e.g. the reference
    answers a reward function reads) are kept as they are."""
    check_dataset_type(dataset, "validate_prompt_dataset")
    check_option("on_invalid", on_invalid, ON_INVALID)
    check_option("images", images, (None, "required"))
    columns = column_names(dataset)
    require_columns(columns, ["prompt"], hint="Prompt-only trainers need a 'prompt' column.")
    image_column = find_image_column(columns, images)
    features = dataset.features or {}
    steps = [cell("prompt", text_check_for(features.get("prompt"))), *_image_steps(image_column, images, ())]
    name = "validate_prompt_dataset"
    if isinstance(dataset, IterableDataset):
        return scan_lazily(
            dataset,
            steps,
            name=name,
            on_invalid=on_invalid,
            output_columns=columns,
            image_columns=[image_column] if image_column else [],
            output_features=_lazy_features(dataset, {}, columns, image_column),
        )
    needed = [column for column in ("prompt", image_column) if column is not None]
    result = scan(dataset, needed, steps, name=name, on_invalid=on_invalid)
    return cast_image_column(result.kept_rows(dataset), image_column)


# the table of checks


def _preference_steps(
    columns: list[str],
    features: Features,
    image_column: str | None,
    images: str | None,
    extract: _ExtractPrompt | None,
) -> list[Step]:
    explicit_prompt = [cell("prompt", text_check_for(features.get("prompt")))] if "prompt" in columns else []
    return [
        *[cell(column, text_check_for(features.get(column))) for column in COMPLETIONS],
        *explicit_prompt,
        ("rejected", _same_format_as_chosen),
        ("rejected", _differs_from_chosen),
        *([("prompt", extract)] if extract else []),
        *[(column, _assistant_turns(column)) for column in COMPLETIONS],
        *_image_steps(image_column, images, COMPLETIONS),
    ]


def _may_need_extraction(columns: list[str], features: Features) -> bool:
    """TRL's `maybe_extract_prompt` leaves a row alone when its prompt has the completions' format; the column
    types tell us that for every row at once (an `IterableDataset` without features is checked row by row)."""
    if "prompt" not in columns:
        return True
    kinds = {_kind(features.get(column)) for column in ("prompt", "chosen")}
    return len(kinds) > 1 or None in kinds


def _kind(feature: Any) -> str | None:
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return "text"
    return "messages" if isinstance(feature, (List, LargeList)) else None


def _image_steps(image_column: str | None, images: str | None, completions: tuple[str, ...]) -> list[Step]:
    if image_column is None:
        return []
    if image_column == "image":
        check = check_image
    else:

        def check(value: Any) -> None:
            check_images(value, required=images == "required")

    return [cell(image_column, check), (image_column, _placeholders_match(image_column, completions))]


def _same_format_as_chosen(row: Row) -> None:
    if isinstance(row["chosen"], list) != isinstance(row["rejected"], list):
        kind = "a list of messages" if isinstance(row["chosen"], list) else "a string"
        raise Invalid(f"the same format as 'chosen' ({kind})", show(row["rejected"]))


def _differs_from_chosen(row: Row) -> None:
    if row["chosen"] == row["rejected"]:
        raise Invalid("a completion different from 'chosen'", "the same completion as 'chosen'")


def _assistant_turns(column: str):
    """A conversational completion (after the prompt is extracted) is the model's turn: it starts with an
    `assistant` message and holds only `assistant` and `tool` messages. A `user` turn there would be trained on as
    if the model had written it."""

    def check(row: Row) -> None:
        messages = row[column]
        if not isinstance(messages, list):
            return
        for index, message in enumerate(messages):
            role = message.get("role")
            if role not in COMPLETION_ROLES or (index == 0 and role != "assistant"):
                expected = "a completion of assistant turns (role 'assistant' first, then 'assistant' or 'tool')"
                raise Invalid(expected, f"role {show(role)} in message {index}", column)

    return check


class _ExtractPrompt:
    """Step: TRL's `maybe_extract_prompt` (moves the shared prefix of an implicit prompt into `prompt`), counting
    the rows it changed. An implicit prompt needs completions that share a prefix and then differ."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, row: Row) -> Row | None:
        extracted = maybe_extract_prompt(row)
        if extracted is row:  # explicit prompt: unchanged
            return None
        chosen, rejected = row["chosen"], row["rejected"]
        if chosen[:1] != rejected[:1]:
            raise Invalid("a prompt shared by 'chosen' and 'rejected'", "no common prefix", "prompt")
        for column, shorter, longer in (("chosen", chosen, rejected), ("rejected", rejected, chosen)):
            if longer[: len(shorter)] == shorter:
                expected = "a completion that is not a prefix of the other one (the prompt is implicit)"
                raise Invalid(expected, f"{show(shorter)}, a prefix of {show(longer)}", column)
        self.count += 1
        return {**row, **extracted}


def _placeholders_match(image_column: str, completions: tuple[str, ...]):
    """As TRL's vision collators do: the prompt's `{"type": "image"}` placeholders (inserted automatically when its
    content is plain text) take the row's images, and completions hold none."""

    def check(row: Row) -> None:
        if not isinstance(row["prompt"], list):
            return  # standard format: the processor's own image tokens, not checked here
        try:
            prepare_multimodal_messages(row["prompt"], images=[None] * image_count(row[image_column]))
        except ValueError as err:
            raise Invalid("as many images as image placeholders in the prompt", str(err).rstrip(".")) from None
        for column in completions:
            try:
                prepare_multimodal_messages(row[column])
            except ValueError:
                raise Invalid("no image placeholders in a completion", show(row[column]), column) from None

    return check


# normalised output


def find_image_column(columns: list[str], images: str | None) -> str | None:
    present = [column for column in ("images", "image") if column in columns]
    if len(present) == 2:
        raise PreferenceDataError("either an 'images' (list) or an 'image' column", "both", column="image")
    if images == "required" and not present:
        raise PreferenceDataError(
            "an 'images' (list) or 'image' column (images='required')", f"only {columns}", column="images"
        )
    return present[0] if present else None


def cast_image_column(dataset: Dataset, column: str | None) -> Dataset:
    """Paths and bytes become `datasets.Image` (decoded lazily on access), as TRL's vision collators expect."""
    if column is None:
        return dataset
    feature = as_image_feature(dataset.features[column])
    return dataset if feature == dataset.features[column] else dataset.cast_column(column, feature)


def _lazy_features(
    dataset: IterableDataset, new: dict[str, Any], output_columns: list[str], image_column: str | None
) -> Features | None:
    """Features of a lazily checked dataset with an image column (cast to `datasets.Image`), when they are known."""
    if dataset.features is None or image_column is None:
        return None
    features = {**dataset.features, **new, image_column: as_image_feature(dataset.features[image_column])}
    return Features({name: features[name] for name in output_columns})


def _texts(row: Row) -> tuple[Any, Any, Any]:
    return row["prompt"], row["chosen"], row["rejected"]


def _replace_texts(
    dataset: Dataset, rows: list[int], texts: list[tuple[Any, Any, Any]], features: Features
) -> Dataset:
    """`prompt`, `chosen`, `rejected` rebuilt from the normalised rows, in front of the other columns."""
    prompts, chosen, rejected = (list(column) for column in zip(*texts))
    return rebuild(
        dataset,
        rows,
        {
            "prompt": (prompts, features["chosen"]),  # after extraction the prompt has the completions' format
            "chosen": (chosen, features["chosen"]),
            "rejected": (rejected, features["rejected"]),
        },
    )
