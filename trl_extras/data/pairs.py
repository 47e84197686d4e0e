"""Scored (pointwise) and ranked (listwise) feedback turned into preference pairs."""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import combinations
from typing import Any, Literal

from datasets import Dataset, LargeList, List

from ._scan import (
    ON_INVALID,
    Row,
    Scan,
    cell,
    check_dataset_type,
    check_option,
    column_names,
    rebuild,
    require_columns,
    scan,
)
from .checks import check_number, show, text_check_for
from .errors import Invalid, Skip

PAIRS = "_pairs"  # the row key where the pairing step leaves its pairs

# strategy(indices of worse completions, scores, rng) -> indices paired against the best completion
STRATEGIES: dict[str, Callable[[list[int], list[float], random.Random], list[int]]] = {
    "best_vs_worst": lambda worse, scores, rng: [min(worse, key=scores.__getitem__)],
    "best_vs_random": lambda worse, scores, rng: [rng.choice(worse)],
    "best_vs_all": lambda worse, scores, rng: worse,
}
MODES = ("all", "adjacent")


def scored_to_pairs(
    dataset: Dataset,
    *,
    strategy: Literal["best_vs_worst", "best_vs_random", "best_vs_all"] = "best_vs_worst",
    prompt_column: str = "prompt",
    completions_column: str = "completions",
    scores_column: str = "scores",
    seed: int = 0,
    on_invalid: Literal["raise", "drop"] = "raise",
) -> Dataset:
    """Turn scored feedback (UltraFeedback style: one prompt, several completions, one score each, higher is
    better) into `prompt`, `chosen`, `rejected`, `score_chosen`, `score_rejected` rows.

    The best completion (the first one if several share the top score) is paired with:
    `"best_vs_worst"` the lowest-scored one, `"best_vs_random"` a random lower-scored one (drawn with `seed`), or
    `"best_vs_all"` every lower-scored one. Equal scores never make a pair, nor do identical completions; a row that
    yields no pair (e.g. all scores equal) is dropped and reported. Other columns are repeated for each pair.
    Completions may be strings or conversations (lists of messages).
    """
    check_dataset_type(dataset, "scored_to_pairs", iterable=False)
    check_option("strategy", strategy, tuple(STRATEGIES))
    check_option("on_invalid", on_invalid, ON_INVALID)
    require_columns(column_names(dataset), [prompt_column, completions_column, scores_column])
    features = dataset.features
    steps = [
        cell(prompt_column, text_check_for(features[prompt_column])),
        cell(completions_column, _list_of(_item_check(features[completions_column]), "completion", minimum=2)),
        cell(scores_column, _list_of(check_number, "score")),
        (scores_column, _one_per_completion(completions_column, scores_column, "score")),
        (scores_column, _scored_pairs(completions_column, scores_column, STRATEGIES[strategy], random.Random(seed))),
    ]
    columns = [prompt_column, completions_column, scores_column]
    result = scan(dataset, columns, steps, name="scored_to_pairs", on_invalid=on_invalid, collect=_pairs_of)
    completion, score = _item_feature(features[completions_column]), _item_feature(features[scores_column])
    new_columns = {"chosen": completion, "rejected": completion, "score_chosen": score, "score_rejected": score}
    return _explode(dataset, result, prompt_column, [completions_column, scores_column], new_columns)


def ranked_to_pairs(
    dataset: Dataset,
    *,
    mode: Literal["all", "adjacent"] = "all",
    prompt_column: str = "prompt",
    completions_column: str = "completions",
    ranks_column: str | None = None,
    on_invalid: Literal["raise", "drop"] = "raise",
) -> Dataset:
    """Turn ranked feedback (one prompt, several completions) into `prompt`, `chosen`, `rejected` rows.

    Completions are ordered best-first, unless a ranks column gives each one's rank (lower is better; equal ranks
    are ties). `ranks_column=None` uses a `ranks` column when there is one. `mode="all"` pairs every completion with
    every worse-ranked one (n(n-1)/2 pairs for n distinct ranks); `"adjacent"` pairs each rank only with the next
    one (n-1 pairs). Ties and identical completions never make a pair; a row that yields none is dropped and
    reported. Other columns are repeated for each pair.
    """
    check_dataset_type(dataset, "ranked_to_pairs", iterable=False)
    check_option("mode", mode, MODES)
    check_option("on_invalid", on_invalid, ON_INVALID)
    columns = column_names(dataset)
    if ranks_column is None and "ranks" in columns:
        ranks_column = "ranks"
    rank_columns = [ranks_column] if ranks_column else []
    require_columns(columns, [prompt_column, completions_column, *rank_columns])
    features = dataset.features
    rank_steps = [cell(column, _list_of(check_number, "rank")) for column in rank_columns] + [
        (column, _one_per_completion(completions_column, column, "rank")) for column in rank_columns
    ]
    steps = [
        cell(prompt_column, text_check_for(features[prompt_column])),
        cell(completions_column, _list_of(_item_check(features[completions_column]), "completion", minimum=2)),
        *rank_steps,
        (ranks_column or completions_column, _ranked_pairs(completions_column, ranks_column, mode)),
    ]
    needed = [prompt_column, completions_column, *rank_columns]
    result = scan(dataset, needed, steps, name="ranked_to_pairs", on_invalid=on_invalid, collect=_pairs_of)
    completion = _item_feature(features[completions_column])
    new_columns = {"chosen": completion, "rejected": completion}
    return _explode(dataset, result, prompt_column, [completions_column, *rank_columns], new_columns)


# checks


def _list_of(check: Callable[[Any], None], noun: str, minimum: int = 0) -> Callable[[Any], None]:
    expected = f"a list of at least {minimum} {noun}s" if minimum else f"a list of {noun}s"

    def check_list(value: Any) -> None:
        if not isinstance(value, list) or len(value) < minimum:
            raise Invalid(expected, show(value))
        for index, item in enumerate(value):
            try:
                check(item)
            except Invalid as err:
                raise Invalid(err.expected, f"{err.got} at {noun} {index}") from None

    return check_list


def _item_check(feature: Any) -> Callable[[Any], None]:
    return text_check_for(_item_feature(feature))


def _item_feature(feature: Any) -> Any:
    return feature.feature if isinstance(feature, (List, LargeList)) else None


def _one_per_completion(completions_column: str, column: str, noun: str):
    def check(row: Row) -> None:
        if len(row[column]) != len(row[completions_column]):
            got = f"{len(row[column])} {noun}s for {len(row[completions_column])} completions"
            raise Invalid(f"one {noun} per completion", got)

    return check


# pairing


def _scored_pairs(completions_column: str, scores_column: str, strategy, rng: random.Random):
    def pair(row: Row) -> Row:
        completions, scores = row[completions_column], row[scores_column]
        if len(set(scores)) == 1:
            raise Skip("at least two different scores", f"all {len(scores)} scores equal {scores[0]}")
        best = max(range(len(scores)), key=scores.__getitem__)
        worse = [j for j, score in enumerate(scores) if score < scores[best] and completions[j] != completions[best]]
        if not worse:
            raise Skip("a lower-scored completion different from the best one", "only copies of the best one")
        pairs = [(completions[best], completions[j], scores[best], scores[j]) for j in strategy(worse, scores, rng)]
        return {**row, PAIRS: pairs}

    return pair


def _ranked_pairs(completions_column: str, ranks_column: str | None, mode: str):
    def pair(row: Row) -> Row:
        completions = row[completions_column]
        ranks = row[ranks_column] if ranks_column else list(range(len(completions)))
        if len(set(ranks)) == 1:
            raise Skip("at least two different ranks", f"all {len(ranks)} ranks equal {ranks[0]}")
        indices = rank_pairs(ranks, mode)
        pairs = [(completions[a], completions[b]) for a, b in indices if completions[a] != completions[b]]
        if not pairs:
            raise Skip("two differently ranked completions that differ", "only identical completions")
        return {**row, PAIRS: pairs}

    return pair


def rank_pairs(ranks: list[float], mode: str) -> list[tuple[int, int]]:
    """(better, worse) index pairs: across every two rank levels (`"all"`) or consecutive ones (`"adjacent"`)."""
    levels = sorted(set(ranks))
    members = {level: [i for i, rank in enumerate(ranks) if rank == level] for level in levels}
    level_pairs = zip(levels, levels[1:]) if mode == "adjacent" else combinations(levels, 2)
    return [(a, b) for better, worse in level_pairs for a in members[better] for b in members[worse]]


def _pairs_of(row: Row) -> list[tuple]:
    return row[PAIRS]


def _explode(
    dataset: Dataset, result: Scan, prompt_column: str, consumed: list[str], new_columns: dict[str, Any]
) -> Dataset:
    """One row per pair: the pair's columns, then the source row's other columns (repeated for each pair)."""
    sources = [index for index, pairs in zip(result.kept, result.outputs) for _ in pairs]
    pairs = [pair for row_pairs in result.outputs for pair in row_pairs]
    if prompt_column != "prompt":
        dataset = dataset.rename_column(prompt_column, "prompt")
    columns = {name: (list(values), feature) for (name, feature), values in zip(new_columns.items(), zip(*pairs))}
    return rebuild(dataset, sources, columns, drop=consumed)
