"""The public error, the internal signals raised by checks, and the drop report."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

logger = logging.getLogger("trl_extras.data")

DROP_HINT = 'Fix the row, or pass on_invalid="drop" to drop invalid rows (they are counted and logged).'
_ROWS_SHOWN = 5


class PreferenceDataError(ValueError):
    """A dataset, or one of its rows, does not have the shape a trainer needs.

    Attributes:
        row: index of the offending row in the dataset that was passed in, or `None` for a dataset-level problem
            (a missing column, no valid row left).
        column: the offending column, or `None`.
        expected: what the column should hold, e.g. `"a non-empty string"`.
        got: what it holds, e.g. `"'' (empty)"`.

    The message reads `Row 3, column 'chosen': expected a non-empty string, got '' (empty). <hint>`.
    """

    def __init__(
        self, expected: str, got: str = "", row: int | None = None, column: str | None = None, hint: str = ""
    ):
        self.expected, self.got, self.row, self.column, self.hint = expected, got, row, column, hint
        super().__init__(_message(expected, got, row, column, hint))

    def __reduce__(self):  # keep the attributes when the error crosses a process boundary
        return type(self), (self.expected, self.got, self.row, self.column, self.hint)


def _message(expected: str, got: str, row: int | None, column: str | None, hint: str) -> str:
    if row is not None and column is not None:
        where = f"Row {row}, column {column!r}"
    elif row is not None:
        where = f"Row {row}"
    elif column is not None:
        where = f"Column {column!r}"
    else:
        where = "Dataset"
    message = f"{where}: expected {expected}"
    if got:
        message += f", got {got}"
    return f"{message}. {hint}" if hint else message


class Invalid(Exception):
    """Raised by a check when a row breaks a rule.

    `expected` must not depend on the row (it groups rows in the drop report); row details go in `got`. `column`
    overrides the column of the step that raised it (for a check that looks at several columns).
    """

    def __init__(self, expected: str, got: str, column: str | None = None):
        super().__init__(expected, got, column)
        self.expected, self.got, self.column = expected, got, column


class Skip(Invalid):
    """Raised for a valid row that yields nothing (a tie, all-equal scores): always dropped and reported."""


def drop_report(name: str, total: int, dropped: list[tuple[int, Invalid]]) -> str:
    """One line per reason: `2 x column 'chosen': expected a non-empty string (rows 1, 4)`."""
    counts = Counter((problem.column, problem.expected) for _, problem in dropped)
    rows = defaultdict(list)
    for index, problem in dropped:
        rows[problem.column, problem.expected].append(index)
    lines = [f"{name}: dropped {len(dropped)} of {total} rows."]
    for (column, expected), count in counts.most_common():
        where = f"column {column!r}" if column is not None else "row"
        lines.append(f"  {count} x {where}: expected {expected} ({_some_rows(rows[column, expected])})")
    return "\n".join(lines)


def _some_rows(indices: list[int]) -> str:
    shown = ", ".join(str(index) for index in indices[:_ROWS_SHOWN])
    more = f", ... ({len(indices) - _ROWS_SHOWN} more)" if len(indices) > _ROWS_SHOWN else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"
