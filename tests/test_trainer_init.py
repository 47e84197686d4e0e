"""The shared start of every trainer's ``__init__`` (``trl_extras/trainer/_init.py``)."""

from dataclasses import dataclass

import pytest
from datasets import Dataset

from trl_extras.trainer._init import resolve_args, validate_datasets


@dataclass
class ParentConfig:
    output_dir: str = "out"


@dataclass
class ChildConfig(ParentConfig):
    pass


def test_default_config_is_named_after_the_model():
    assert resolve_args(None, ChildConfig, "org/tiny-model/", "ChildTrainer", "Child").output_dir == "tiny-model-Child"


def test_parent_config_is_refused_naming_both_classes():
    with pytest.raises(
        TypeError, match=r"ChildTrainer needs `args` to be a ChildConfig, got ParentConfig.*ParentConfig"
    ):
        resolve_args(ParentConfig(), ChildConfig, "m", "ChildTrainer", "Child")


def test_given_config_is_kept():
    config = ChildConfig("mine")
    assert resolve_args(config, ChildConfig, "m", "ChildTrainer", "Child") is config


def test_validate_datasets_checks_every_split_and_skips_none():
    seen = []

    def check(dataset):
        seen.append(len(dataset))
        return dataset.add_column("checked", [True] * len(dataset))

    train, evals, none = validate_datasets(
        check, Dataset.from_dict({"a": [1, 2]}), {"x": Dataset.from_dict({"a": [1]})}, None
    )
    assert seen == [2, 1] and train["checked"] == [True, True] and evals["x"]["checked"] == [True] and none is None


def test_default_config_of_a_model_object_uses_instance_name_when_given():
    class Model:  # a loaded model whose config names its source
        class config:  # noqa: N801
            _name_or_path = "org/loaded-model"

    assert resolve_args(None, ChildConfig, Model(), "ChildTrainer", "Child").output_dir == "loaded-model-Child"
    # A diffusers pipeline object is named "pipeline", whatever it was loaded from
    named = resolve_args(None, ChildConfig, Model(), "ChildTrainer", "Child", "pipeline")
    assert named.output_dir == "pipeline-Child"


def test_validate_datasets_passes_streaming_datasets_only_with_every():
    streamed = Dataset.from_dict({"a": [1, 2, 3]}).to_iterable_dataset()
    seen = []

    def check(dataset):
        seen.append(type(dataset).__name__)
        return dataset

    (skipped,) = validate_datasets(check, streamed)
    assert skipped is streamed and seen == []
    train, evals, none = validate_datasets(check, streamed, {"x": streamed}, None, every=True)
    assert seen == ["IterableDataset", "IterableDataset"] and none is None
