"""Image preference pairs for Diffusion-DPO: Pick-a-Pic style (`caption`, two images, `label_0`) or explicit
(`caption`, `chosen`, `rejected` images), normalised to `caption`, `chosen`, `rejected`."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Image, IterableDataset

from ._scan import (
    ON_INVALID,
    Row,
    Step,
    cell,
    check_dataset_type,
    check_option,
    column_names,
    require_columns,
    scan,
    scan_lazily,
)
from .checks import as_image_feature, check_number, check_text, image_size, show
from .errors import Invalid, PreferenceDataError, Skip

# Pick-a-Pic: label_0 is 1 when the first image is preferred, 0 when the second is, 0.5 for a tie
PICK_A_PIC_IMAGES = (("jpg_0", "jpg_1"), ("image_0", "image_1"))
LABELS = (0, 0.5, 1)
TIE = 0.5


def validate_image_pair_dataset(
    dataset: Dataset | IterableDataset,
    *,
    ties: Literal["drop", "raise"] = "drop",
    on_invalid: Literal["raise", "drop"] = "raise",
    allow_size_mismatch: bool = True,
) -> Dataset | IterableDataset:
    """Check an image-pair dataset, decoding every image once, and return it as `caption`, `chosen`, `rejected`.

    Args:
        dataset: Pick-a-Pic style (`caption`, `jpg_0`/`jpg_1` bytes or `image_0`/`image_1` images, paths or bytes,
            `label_0` in {0, 0.5, 1}, optionally `label_1 = 1 - label_0`), or `caption` with `chosen` and
            `rejected` image columns.
        ties: `"drop"` drops rows with `label_0 = 0.5` and logs how many; `"raise"` makes a tie an invalid row.
        on_invalid: `"raise"` raises `PreferenceDataError` on the first invalid row; `"drop"` drops and logs them.
        allow_size_mismatch: chosen and rejected images of one row may differ in size (the default: diffusion
            collators resize both to the training resolution). `False` makes a size mismatch an invalid row.

    Returns:
        `caption`, `chosen`, `rejected` (as `datasets.Image`, decoded lazily on access) and any other columns;
        the image and label columns of the Pick-a-Pic layout are replaced.
    """
    return _image_pairs(dataset, ties, on_invalid, allow_size_mismatch, decode=True)


def image_pairs_to_preference(
    dataset: Dataset | IterableDataset,
    *,
    ties: Literal["drop", "raise"] = "drop",
    on_invalid: Literal["raise", "drop"] = "raise",
) -> Dataset | IterableDataset:
    """Turn Pick-a-Pic style pairs into `caption`, `chosen`, `rejected` without decoding the images.

    Checks captions, labels, ties and that each image is present (and, for a local path, exists);
    `validate_image_pair_dataset` also decodes every image. Arguments as there.
    """
    return _image_pairs(dataset, ties, on_invalid, allow_size_mismatch=True, decode=False)


def _image_pairs(dataset: Any, ties: str, on_invalid: str, allow_size_mismatch: bool, decode: bool) -> Any:
    name = "validate_image_pair_dataset" if decode else "image_pairs_to_preference"
    check_dataset_type(dataset, name)
    check_option("ties", ties, ("drop", "raise"))
    check_option("on_invalid", on_invalid, ON_INVALID)
    columns = column_names(dataset)
    require_columns(columns, ["caption"], hint="Image pairs need a 'caption' column.")
    first, second, labels = _layout(columns)
    steps = [
        cell("caption", check_text),
        *_label_steps(labels, ties),
        (first, _images_ok(first, second, decode, allow_size_mismatch)),
    ]
    if isinstance(dataset, IterableDataset):
        kept_columns = [column for column in columns if column not in (first, second, *labels)]
        output_features = None
        if dataset.features is not None:
            output_features = Features(
                {**{c: dataset.features[c] for c in kept_columns}, "chosen": Image(), "rejected": Image()}
            )
        return scan_lazily(
            dataset,
            steps,
            name=name,
            on_invalid=on_invalid,
            output_columns=[*kept_columns, "chosen", "rejected"],
            finish=_orient_row(first, second) if labels else lambda row: row,
            remove_columns=[first, second, *labels],
            image_columns=[first, second],
            output_features=output_features,
        )
    result = scan(dataset, ["caption", first, second, *labels], steps, name=name, on_invalid=on_invalid)
    dataset = result.kept_rows(dataset)
    for column in (first, second):
        dataset = dataset.cast_column(column, as_image_feature(dataset.features[column]))
    return _orient_columns(dataset, first, second, labels) if labels else dataset


def _layout(columns: list[str]) -> tuple[str, str, tuple[str, ...]]:
    """(first image column, second image column, label columns)."""
    if "chosen" in columns and "rejected" in columns:
        return "chosen", "rejected", ()
    for first, second in PICK_A_PIC_IMAGES:
        if first in columns and second in columns:
            if "label_0" not in columns:
                expected = f"a 'label_0' column (1: {first} preferred, 0: {second} preferred, 0.5: tie)"
                raise PreferenceDataError(expected, f"only {columns}", column="label_0")
            return first, second, ("label_0", "label_1") if "label_1" in columns else ("label_0",)
    raise PreferenceDataError(
        "two image columns: 'jpg_0'/'jpg_1' or 'image_0'/'image_1' (with 'label_0'), or 'chosen'/'rejected'",
        f"only {columns}",
    )


# the table of checks


def _label_steps(labels: tuple[str, ...], ties: str) -> list[Step]:
    if not labels:
        return []
    steps = [cell("label_0", _check_label), ("label_0", _tie(ties))]
    if "label_1" in labels:
        steps.insert(1, ("label_1", _label_1_agrees))
    return steps


def _check_label(value: Any) -> None:
    check_number(value)
    if value not in LABELS:
        raise Invalid("a label in (0, 0.5, 1)", show(value))


def _label_1_agrees(row: Row) -> None:
    if row["label_1"] is None or abs(row["label_1"] - (1 - row["label_0"])) > 1e-6:
        raise Invalid("label_1 = 1 - label_0", f"label_0 = {row['label_0']}, label_1 = {show(row['label_1'])}")


def _tie(ties: str):
    def check(row: Row) -> None:
        if row["label_0"] == TIE:
            if ties == "drop":
                raise Skip("a preference, not a tie (ties='drop')", "label_0 = 0.5")
            raise Invalid("a preference (label_0 of 0 or 1), not a tie (ties='raise')", "label_0 = 0.5")

    return check


def _images_ok(first: str, second: str, decode: bool, allow_size_mismatch: bool):
    def check(row: Row) -> None:
        sizes = []
        for column in (first, second):
            try:
                sizes.append(image_size(row[column], decode=decode))
            except Invalid as err:
                raise Invalid(err.expected, err.got, column) from None
        if row[first] == row[second]:
            raise Invalid(f"an image different from {first!r}", "the same image twice", second)
        if not allow_size_mismatch and None not in sizes and sizes[0] != sizes[1]:
            (w0, h0), (w1, h1) = sizes
            expected = "images of one size in a pair (or allow_size_mismatch=True)"
            raise Invalid(expected, f"{w0}x{h0} ({first}) and {w1}x{h1} ({second})", second)

    return check


# orienting pairs: chosen is the preferred image


def _orient_row(first: str, second: str):
    def orient(row: Row) -> Row:
        first_wins = row["label_0"] == 1
        preferred, other = (first, second) if first_wins else (second, first)
        return {**row, "chosen": row[preferred], "rejected": row[other]}

    return orient


def _orient_columns(dataset: Dataset, first: str, second: str, labels: tuple[str, ...]) -> Dataset:
    """Columnar version of `_orient_row` for a `Dataset`: an Arrow `if_else` per batch, no image decoded."""
    features = Features({name: f for name, f in dataset.features.items() if name not in (first, second, *labels)})
    features["chosen"] = features["rejected"] = Image()

    def orient(table: pa.Table) -> pa.Table:
        first_wins = pc.equal(table["label_0"], 1)
        chosen = pc.if_else(first_wins, table[first], table[second])
        rejected = pc.if_else(first_wins, table[second], table[first])
        table = table.drop_columns([first, second, *labels])
        return table.append_column("chosen", chosen).append_column("rejected", rejected)

    formatted = dataset.with_format("arrow").map(orient, batched=True, features=features, desc="Orienting pairs")
    return formatted.with_format(dataset.format["type"])
