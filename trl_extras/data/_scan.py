"""Run a table of steps over every row of a dataset and keep, drop or reject rows.

A step is `(column, function)`: the function takes a row (a dict of the columns the caller asked for) and returns
`None` (row is fine) or a new row (a normalised one), or raises `Invalid` (blamed on `column`) or `Skip`. A `Dataset`
is read column-wise in Arrow batches, without decoding images; an `IterableDataset` is checked lazily, batch by batch,
as it is iterated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, IterableDataset
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable
from trl.data_utils import get_dataset_column_names

from .checks import as_image_feature
from .errors import DROP_HINT, Invalid, PreferenceDataError, Skip, drop_report, logger

Row = dict[str, Any]
Step = tuple[str, Callable[[Row], "Row | None"]]
ON_INVALID = ("raise", "drop")
BATCH_SIZE = 1000


def cell(column: str, check: Callable[[Any], None]) -> Step:
    """A step that checks the value of one column."""
    return column, lambda row: check(row[column])


def apply_steps(steps: Sequence[Step], row: Row) -> Row:
    for column, step in steps:
        try:
            new_row = step(row)
        except Invalid as err:
            err.column = err.column or column
            raise
        if new_row is not None:
            row = new_row
    return row


@dataclass
class Scan:
    """What a pass over a `Dataset` found: the rows kept, what `collect` took from them, and the rows dropped."""

    total: int
    kept: list[int] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    dropped: list[tuple[int, Invalid]] = field(default_factory=list)

    def kept_rows(self, dataset: Dataset) -> Dataset:
        return dataset if len(self.kept) == self.total else dataset.select(self.kept)


def scan(
    dataset: Dataset,
    columns: Sequence[str],
    steps: Sequence[Step],
    *,
    name: str,
    on_invalid: str,
    collect: Callable[[Row], Any] | None = None,
) -> Scan:
    """Apply `steps` to every row; raise on the first invalid row, or drop it and log a report."""
    if len(dataset) == 0:
        raise PreferenceDataError("a dataset with at least one row", "0 rows")
    result = Scan(total=len(dataset))
    for index, row in _rows(dataset, list(columns)):
        try:
            row = apply_steps(steps, row)
        except Invalid as err:
            _raise_unless_dropped(err, index, on_invalid)
            result.dropped.append((index, err))
            continue
        result.kept.append(index)
        if collect is not None:
            result.outputs.append(collect(row))
    if result.dropped:
        logger.warning(drop_report(name, result.total, result.dropped))
    if not result.kept:
        raise PreferenceDataError("at least one valid row", f"all {result.total} rows were dropped (see the warning)")
    return result


def scan_lazily(
    dataset: IterableDataset,
    steps: Sequence[Step],
    *,
    name: str,
    on_invalid: str,
    output_columns: Sequence[str],
    finish: Callable[[Row], Row] = lambda row: row,
    remove_columns: Sequence[str] = (),
    image_columns: Sequence[str] = (),
    output_features: Features | None = None,
) -> IterableDataset:
    """The `IterableDataset` version of `scan`: checks run as the dataset is iterated, one batch at a time, and each
    batch that drops rows logs its own report. Rows keep their columns, normalised by `steps` and `finish`.

    `image_columns` are read undecoded, so that an unreadable image is reported like any other bad value; with
    `output_features` the result decodes them again (once) when it is iterated.
    """
    if dataset.features is not None and image_columns:
        raw = {name: as_image_feature(dataset.features[name], decode=False) for name in image_columns}
        dataset = dataset.cast(Features({**dataset.features, **raw}))

    def check_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        names, rows, dropped = list(batch), [], []
        for index, values in zip(indices, zip(*batch.values())):
            try:
                rows.append(finish(apply_steps(steps, dict(zip(names, values)))))
            except Invalid as err:
                _raise_unless_dropped(err, index, on_invalid)
                dropped.append((index, err))
        if dropped:
            logger.warning(drop_report(f"{name} (rows {indices[0]}-{indices[-1]})", len(indices), dropped))
        return {column: [row[column] for row in rows] for column in output_columns}

    checked = dataset.map(
        check_batch, batched=True, batch_size=BATCH_SIZE, with_indices=True, remove_columns=list(remove_columns)
    )
    return checked if output_features is None else checked.cast(output_features)


def _raise_unless_dropped(err: Invalid, index: int, on_invalid: str) -> None:
    if on_invalid == "raise" and not isinstance(err, Skip):
        raise PreferenceDataError(err.expected, err.got, index, err.column, DROP_HINT) from None


def _rows(dataset: Dataset, columns: list[str]) -> Iterator[tuple[int, Row]]:
    """Rows as dicts, read column-wise from Arrow batches (images stay undecoded `{"bytes", "path"}` dicts)."""
    start = 0
    for table in dataset.with_format("arrow", columns=columns).iter(batch_size=BATCH_SIZE):
        values = [table.column(name).to_pylist() for name in columns]
        for offset, row_values in enumerate(zip(*values)):
            yield start + offset, dict(zip(columns, row_values))
        start += table.num_rows


def rebuild(
    dataset: Dataset, rows: list[int], new_columns: dict[str, tuple[list, Any]], drop: Sequence[str] = ()
) -> Dataset:
    """`new_columns` (name -> (values, feature or None to infer)) in front of the dataset's other columns, taken at
    `rows` (repeats allowed) with one Arrow `take`, much faster than `select` + `flatten_indices`. The result is an
    in-memory dataset."""
    rest = dataset.remove_columns([name for name in (*drop, *new_columns) if name in dataset.column_names])
    features = Features({name: feature for name, (_, feature) in new_columns.items() if feature is not None})
    arrays = {
        name: pa.array(values, type=features.arrow_schema.field(name).type if name in features else None)
        for name, (values, _) in new_columns.items()
    }
    table = pa.table(arrays)
    if rest.column_names:
        others = rest.with_format("arrow")[:].take(pa.array(rows, type=pa.int64()))
        table = pa.Table.from_arrays([*table.columns, *others.columns], names=[*arrays, *others.column_names])
    features = Features({**Features.from_arrow_schema(table.schema), **features, **rest.features})
    info = DatasetInfo(features=Features({name: features[name] for name in table.column_names}))
    # a random fingerprint: hashing every value would cost more than building the table
    return Dataset(InMemoryTable(table), info=info, fingerprint=generate_random_fingerprint())


# dataset-level checks


def check_dataset_type(dataset: Any, name: str, *, iterable: bool = True) -> None:
    allowed = (Dataset, IterableDataset) if iterable else (Dataset,)
    if not isinstance(dataset, allowed):
        kinds = "a datasets.Dataset or IterableDataset" if iterable else "a datasets.Dataset"
        raise TypeError(f"{name} expects {kinds}, got {type(dataset).__name__}. Use Dataset.from_list(rows).")


def check_option(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    return get_dataset_column_names(dataset)  # an IterableDataset without features is peeked at


def require_columns(columns: Sequence[str], required: Sequence[str], hint: str = "") -> None:
    for name in required:
        if name not in columns:
            raise PreferenceDataError(f"a column named {name!r}", f"only {list(columns)}", column=name, hint=hint)
