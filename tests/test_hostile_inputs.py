"""The worst plausible inputs, for the data layer, every trainer and the CLI: each gets an error that names the field,
row, column or reward function (or the handling docs/reliability.md documents), never silence and never a traceback
from inside torch, transformers or datasets.

Most cases fail before any model loads; the few that need a trainer share tiny models built once per module. The
tables below are the cases; docs/reliability.md is their summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, IterableDataset
from transformers import AutoTokenizer

from trl_extras import cli
from trl_extras.data import (
    PreferenceDataError,
    ranked_to_pairs,
    scored_to_pairs,
    validate_image_pair_dataset,
    validate_preference_dataset,
    validate_prompt_dataset,
)
from trl_extras.data.lengths import check_preference_lengths, check_reward_pair_lengths
from trl_extras.rewards import CheckedRewardFunc, RewardFunctionError, check_reward_funcs
from trl_extras.validation import DPO_LOSS_TYPES, GRPO_LOSS_TYPES, check_config

REPO = Path(__file__).resolve().parent.parent


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def png_bytes(size=(4, 4)):
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, "red").save(buffer, format="PNG")
    return buffer.getvalue()


def pair(prompt="The sky is", chosen=" blue.", rejected=" green."):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def conv_pair(chosen_role="assistant", rejected_role="assistant"):
    return {
        "prompt": [user("Hi")],
        "chosen": [{"role": chosen_role, "content": "Hello!"}],
        "rejected": [{"role": rejected_role, "content": "Go away."}],
    }


@contextlib.contextmanager
def raises_naming(error_type, *needles):
    """`pytest.raises` whose message must contain every needle."""
    with pytest.raises(error_type) as info:
        yield info
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"


# =====================================================================================================================
# data layer: preference datasets (DPO, Unlikelihood, reward, MDPO)

PREFERENCE_CASES = {
    "missing_chosen": ([{"prompt": "a", "rejected": "b"}], {}, ["column named 'chosen'"]),
    "missing_rejected": ([{"prompt": "a", "chosen": "b"}], {}, ["column named 'rejected'"]),
    "empty_chosen": ([pair(), pair(chosen="")], {}, ["Row 1, column 'chosen'", "'' (empty)"]),
    "blank_rejected": ([pair(rejected="   ")], {}, ["Row 0, column 'rejected'", "(blank)"]),
    "none_prompt": ([pair(), pair(prompt=None)], {}, ["Row 1, column 'prompt'", "None"]),
    "empty_prompt": ([pair(prompt="")], {}, ["Row 0, column 'prompt'", "empty"]),
    "same_chosen_rejected": ([pair(chosen=" x", rejected=" x")], {}, ["column 'rejected'", "different from 'chosen'"]),
    "int_chosen": ([{"prompt": "a", "chosen": 3, "rejected": 4}], {}, ["column 'chosen'", "3 (int)"]),
    "float_rejected": ([{"prompt": "a", "chosen": "b", "rejected": 1.5}], {}, ["column 'rejected'", "(float)"]),
    "chosen_role_user": ([conv_pair(), conv_pair(chosen_role="user")], {}, ["Row 1, column 'chosen'", "role 'user'"]),
    "rejected_role_system": ([conv_pair(rejected_role="system")], {}, ["column 'rejected'", "role 'system'"]),
    "unknown_role": ([conv_pair(chosen_role="bot")], {}, ["column 'chosen'", "role 'bot'"]),
    "empty_message_content": (
        [{"prompt": [user("")], "chosen": [assistant("a")], "rejected": [assistant("b")]}],
        {},
        ["column 'prompt'", "non-empty message content"],
    ),
    "empty_conversation": (
        [{"prompt": [user("hi")], "chosen": [], "rejected": [assistant("b")]}],
        {},
        ["column 'chosen'", "non-empty list of messages"],
    ),
    "message_not_a_dict": (
        [{"prompt": ["hi"], "chosen": ["a"], "rejected": ["b"]}],
        {},
        ["each message to be a dict"],
    ),
    "content_part_video": (
        [
            {
                "prompt": [{"role": "user", "content": [{"type": "video", "text": None}]}],
                "chosen": [assistant("a")],
                "rejected": [assistant("b")],
            }
        ],
        {},
        ["column 'prompt'", "content parts of type"],
    ),
    "chosen_list_rejected_string": (
        [{"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": "b"}],
        {},
        ["column 'rejected'", "same format as 'chosen'"],
    ),
    "implicit_prompt_no_common_prefix": (
        [{"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]}],
        {},
        ["column 'prompt'", "no common prefix"],
    ),
    "implicit_prompt_completion_is_prefix": (
        [{"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("b"), assistant("c")]}],
        {},
        ["not a prefix of the other one"],
    ),
    "zero_rows": ([], {}, ["at least one row"]),
    "on_invalid_unknown": ([pair()], {"on_invalid": "skip"}, ["on_invalid must be one of"]),
    "images_unknown": ([pair()], {"images": "yes"}, ["images must be one of"]),
    "images_required_but_absent": ([pair()], {"images": "required"}, ["'images' (list) or 'image' column"]),
    "images_and_image_columns": (
        [{**pair(), "images": [png_bytes()], "image": png_bytes()}],
        {},
        ["either an 'images' (list) or an 'image' column"],
    ),
    "image_file_not_found": (
        [{**pair(), "images": ["/nonexistent/cat.png"]}],
        {},
        ["Row 0, column 'images'", "file not found", "image 0"],
    ),
    "image_garbage_bytes": (
        [{**pair(), "images": [b"not an image"]}],
        {},
        ["column 'images'", "a readable image"],
    ),
    "image_none_in_list": ([{**pair(), "images": [None]}], {}, ["column 'images'", "None (missing)"]),
    "images_required_empty_list": (
        [{**pair(), "images": [png_bytes()]}, {**pair(), "images": []}],
        {"images": "required"},
        ["Row 1, column 'images'", "at least one image"],
    ),
    "image_count_mismatch": (
        [
            {
                "prompt": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]}
                ],
                "chosen": [assistant("a")],
                "rejected": [assistant("b")],
                "images": [png_bytes()],
            }
        ],
        {},
        ["column 'images'", "as many images as image placeholders"],
    ),
    "image_placeholder_in_completion": (
        [
            {
                "prompt": [user("What is it?")],
                "chosen": [{"role": "assistant", "content": [{"type": "image"}]}],
                "rejected": [assistant("b")],
                "images": [png_bytes()],
            }
        ],
        {},
        ["column 'chosen'", "no image placeholders in a completion"],
    ),
    "all_rows_dropped": (
        [pair(chosen=""), pair(rejected="")],
        {"on_invalid": "drop"},
        ["at least one valid row", "all 2 rows were dropped"],
    ),
}


@pytest.mark.parametrize("rows, kwargs, needles", PREFERENCE_CASES.values(), ids=PREFERENCE_CASES)
def test_preference_dataset(rows, kwargs, needles):
    dataset = Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with raises_naming(ValueError, *needles):
        validate_preference_dataset(dataset, **kwargs)


def test_preference_dataset_not_a_dataset():
    with raises_naming(TypeError, "validate_preference_dataset expects", "got list"):
        validate_preference_dataset([pair()])


def test_preference_drop_counts_the_rows_it_drops(caplog):
    rows = [pair(), pair(chosen=""), pair(), {**pair(), "chosen": " same", "rejected": " same"}]
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        kept = validate_preference_dataset(Dataset.from_list(rows), on_invalid="drop")
    assert len(kept) == 2
    assert "dropped 2 of 4 rows" in caplog.text and "row 1" in caplog.text and "row 3" in caplog.text


def test_streamed_preference_dataset_names_the_bad_row_when_iterated():
    rows = [pair(), pair(), pair(rejected="")]
    dataset = IterableDataset.from_generator(lambda: iter(rows))
    checked = validate_preference_dataset(dataset)
    with raises_naming(PreferenceDataError, "Row 2, column 'rejected'"):
        list(checked)


# =====================================================================================================================
# data layer: prompt-only datasets (GRPO, RLOO, ReMax, PPO)

PROMPT_CASES = {
    "missing_prompt_column": ([{"question": "a"}], {}, ["column named 'prompt'", "only ['question']"]),
    "empty_prompt": ([{"prompt": "a"}, {"prompt": ""}], {}, ["Row 1, column 'prompt'", "empty"]),
    "blank_prompt": ([{"prompt": "\n\t"}], {}, ["Row 0, column 'prompt'", "blank"]),
    "none_prompt": ([{"prompt": "a"}, {"prompt": None}], {}, ["Row 1, column 'prompt'", "None"]),
    "int_prompt": ([{"prompt": 7}], {}, ["Row 0, column 'prompt'", "7 (int)"]),
    "conversation_empty_content": ([{"prompt": [user(" ")]}], {}, ["column 'prompt'", "non-empty message content"]),
    "conversation_role_bot": ([{"prompt": [{"role": "bot", "content": "x"}]}], {}, ["column 'prompt'", "role 'bot'"]),
    "images_required_absent": ([{"prompt": "a"}], {"images": "required"}, ["'images' (list) or 'image' column"]),
    "single_image_missing_file": ([{"prompt": "a", "image": "/nonexistent.png"}], {}, ["column 'image'", "not found"]),
}


@pytest.mark.parametrize("rows, kwargs, needles", PROMPT_CASES.values(), ids=PROMPT_CASES)
def test_prompt_dataset(rows, kwargs, needles):
    with raises_naming(ValueError, *needles):
        validate_prompt_dataset(Dataset.from_list(rows), **kwargs)


def test_prompt_dataset_zero_rows():
    with raises_naming(PreferenceDataError, "at least one row", "0 rows"):
        validate_prompt_dataset(Dataset.from_dict({"prompt": []}))


SFT_CASES = {
    "no_known_column": ([{"body": "x"}], {}, ["Column 'text'", "'messages'", "only ['body']"]),
    "custom_text_field_missing": ([{"text": "x"}], {"dataset_text_field": "content"}, ["Column 'content'"]),
    "empty_text": ([{"text": "a"}, {"text": ""}], {}, ["Row 1, column 'text'"]),
    "none_text": ([{"text": None}], {}, ["Row 0, column 'text'", "None"]),
    "messages_empty_content": ([{"messages": [user("hi"), assistant("")]}], {}, ["column 'messages'", "message 1"]),
    "messages_not_a_list": ([{"messages": "hi"}], {}, ["column 'messages'", "a non-empty list of messages"]),
    "empty_completion": ([{"prompt": "a", "completion": ""}], {}, ["Row 0, column 'completion'"]),
    "completion_role_user": ([{"prompt": [user("a")], "completion": [user("b")]}], {}, ["column 'completion'", "role 'user'"]),
    "prompt_completion_formats_differ": ([{"prompt": [user("a")], "completion": "b"}], {}, ["column 'completion'", "the same format as 'prompt'"]),
    "image_file_not_found": ([{"messages": [user("hi")], "images": ["/nonexistent.png"]}], {}, ["column 'images'", "not found"]),
}  # fmt: skip


@pytest.mark.parametrize("rows, kwargs, needles", SFT_CASES.values(), ids=SFT_CASES)
def test_sft_dataset(rows, kwargs, needles):
    from trl_extras.data import validate_sft_dataset

    with raises_naming(ValueError, *needles):
        validate_sft_dataset(Dataset.from_list(rows), **kwargs)


def test_sft_dataset_good_formats_and_tokenised_pass():
    from trl_extras.data import validate_sft_dataset

    for rows in (
        [{"text": "a b"}],
        [{"messages": [user("hi"), assistant("yo")]}],
        [{"prompt": "a", "completion": " b"}],
        [{"input_ids": [1, 2, 3]}],
    ):
        assert len(validate_sft_dataset(Dataset.from_list(rows))) == 1


# =====================================================================================================================
# data layer: scored and ranked feedback, image pairs

SCORED_CASES = {
    "missing_scores": ([{"prompt": "p", "completions": ["a", "b"]}], {}, ["column named 'scores'"]),
    "nan_score": ([{"prompt": "p", "completions": ["a", "b"], "scores": [1.0, math.nan]}], {}, ["Row 0, column 'scores'", "a number", "score 1"]),
    "string_score": ([{"prompt": "p", "completions": ["a", "b"], "scores": ["1", "2"]}], {}, ["column 'scores'", "a number"]),
    "score_count_mismatch": ([{"prompt": "p", "completions": ["a", "b", "c"], "scores": [1.0, 2.0]}], {}, ["one score per completion", "2 scores for 3 completions"]),
    "one_completion": ([{"prompt": "p", "completions": ["a"], "scores": [1.0]}], {}, ["column 'completions'", "at least 2 completions"]),
    "empty_completion": ([{"prompt": "p", "completions": ["a", ""], "scores": [1.0, 2.0]}], {}, ["column 'completions'", "at completion 1"]),
    "unknown_strategy": ([{"prompt": "p", "completions": ["a", "b"], "scores": [1.0, 2.0]}], {"strategy": "best"}, ["strategy must be one of"]),
    "all_ties": ([{"prompt": "p", "completions": ["a", "b"], "scores": [1.0, 1.0]}], {}, ["at least one valid row"]),
}  # fmt: skip


@pytest.mark.parametrize("rows, kwargs, needles", SCORED_CASES.values(), ids=SCORED_CASES)
def test_scored_feedback(rows, kwargs, needles):
    with raises_naming(ValueError, *needles):
        scored_to_pairs(Dataset.from_list(rows), **kwargs)


RANKED_CASES = {
    "unknown_mode": ([{"prompt": "p", "completions": ["a", "b"]}], {"mode": "pairs"}, ["mode must be one of"]),
    "ranks_mismatch": ([{"prompt": "p", "completions": ["a", "b"], "ranks": [1]}], {}, ["one rank per completion"]),
    "nan_rank": ([{"prompt": "p", "completions": ["a", "b"], "ranks": [1.0, math.nan]}], {}, ["column 'ranks'", "a number"]),
    "missing_ranks_column": ([{"prompt": "p", "completions": ["a", "b"]}], {"ranks_column": "order"}, ["column named 'order'"]),
}  # fmt: skip


@pytest.mark.parametrize("rows, kwargs, needles", RANKED_CASES.values(), ids=RANKED_CASES)
def test_ranked_feedback(rows, kwargs, needles):
    with raises_naming(ValueError, *needles):
        ranked_to_pairs(Dataset.from_list(rows), **kwargs)


IMAGE_PAIR_CASES = {
    "missing_caption": ([{"jpg_0": png_bytes(), "jpg_1": png_bytes(), "label_0": 1.0}], {}, ["column named 'caption'"]),
    "empty_caption": ([{"caption": "", "jpg_0": png_bytes(), "jpg_1": png_bytes(), "label_0": 1.0}], {}, ["Row 0, column 'caption'"]),
    "bad_label": ([{"caption": "c", "jpg_0": png_bytes(), "jpg_1": png_bytes(), "label_0": 0.3}], {}, ["column 'label_0'"]),
    "corrupt_image": ([{"caption": "c", "jpg_0": b"garbage", "jpg_1": png_bytes(), "label_0": 1.0}], {}, ["Row 0, column 'jpg_0'", "a readable image"]),
    "tie_raise": ([{"caption": "c", "jpg_0": png_bytes(), "jpg_1": png_bytes(), "label_0": 0.5}], {"ties": "raise"}, ["Row 0"]),
    "unknown_ties_option": ([{"caption": "c", "jpg_0": png_bytes(), "jpg_1": png_bytes(), "label_0": 1.0}], {"ties": "keep"}, ["ties must be one of"]),
}  # fmt: skip


@pytest.mark.parametrize("rows, kwargs, needles", IMAGE_PAIR_CASES.values(), ids=IMAGE_PAIR_CASES)
def test_image_pairs(rows, kwargs, needles):
    with raises_naming(ValueError, *needles):
        validate_image_pair_dataset(Dataset.from_list(rows), **kwargs)


# =====================================================================================================================
# data layer: max_length against tokenised pairs (what TRL's DPOTrainer drops and its collator cuts)


def tokenised(prompt_lengths, chosen_length=3, rejected_length=2):
    return Dataset.from_dict(
        {
            "prompt_ids": [[1] * n for n in prompt_lengths],
            "chosen_ids": [[2] * chosen_length] * len(prompt_lengths),
            "rejected_ids": [[3] * rejected_length] * len(prompt_lengths),
        }
    )


def test_lengths_every_prompt_too_long_is_an_error():
    with raises_naming(PreferenceDataError, "max_length=4", "8 of 8 rows", "longest: 11 tokens, row 7"):
        check_preference_lengths(tokenised(range(4, 12)), max_length=4)


def test_lengths_some_prompts_too_long_is_an_error_by_default():
    with raises_naming(PreferenceDataError, "max_length=6", "4 of 8 rows", "drop_long_prompts=True"):
        check_preference_lengths(tokenised([2, 3, 4, 5, 6, 7, 8, 9]), max_length=6)


def test_lengths_drop_long_prompts_drops_and_counts(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        kept = check_preference_lengths(tokenised([2, 3, 4, 5, 6, 7, 8, 9]), max_length=6, drop_long_prompts=True)
    assert [len(ids) for ids in kept["prompt_ids"]] == [2, 3, 4, 5]
    assert "dropped 4 of 8 rows" in caplog.text and "longest: 9 tokens" in caplog.text


def test_lengths_cut_completions_are_counted_in_a_warning(caplog):
    dataset = tokenised([2, 2, 3], chosen_length=31, rejected_length=1)
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        kept = check_preference_lengths(dataset, max_length=8)
    assert len(kept) == 3
    assert "cuts the end of the completions" in caplog.text and "in 3 of 3 rows" in caplog.text
    assert "prompt + chosen: 34 tokens" in caplog.text


def test_lengths_keep_end_warns_about_the_cut_start(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        kept = check_preference_lengths(tokenised([10, 1]), max_length=8, truncation_mode="keep_end")
    assert len(kept) == 2  # keep_end drops nothing: it keeps the completion end
    assert "keep_end" in caplog.text and "in 1 of 2 rows" in caplog.text


def test_lengths_that_fit_say_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        check_preference_lengths(tokenised([2, 3]), max_length=64)
        check_preference_lengths(tokenised([200]), max_length=None)
    assert caplog.text == ""


def test_lengths_streamed_long_prompt_names_the_row():
    rows = [{"prompt_ids": [1] * n, "chosen_ids": [2], "rejected_ids": [3]} for n in (1, 2, 9)]
    dataset = IterableDataset.from_generator(lambda: iter(rows))
    with raises_naming(PreferenceDataError, "Row 2, column 'prompt'", "9 tokens"):
        list(check_preference_lengths(dataset, max_length=5))


def reward_pairs(chosen_lengths, rejected_lengths):
    return Dataset.from_dict(
        {"chosen_ids": [[2] * n for n in chosen_lengths], "rejected_ids": [[3] * n for n in rejected_lengths]}
    )


def test_reward_lengths_long_pairs_are_dropped_and_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        kept = check_reward_pair_lengths(reward_pairs([3, 9, 4, 5], [2, 2, 7, 5]), max_length=5)
    assert [len(ids) for ids in kept["chosen_ids"]] == [3, 5]  # the rejected of row 2 (7 tokens) drops it too
    assert "dropped 2 of 4 pairs" in caplog.text and "longest: 9 tokens, row 1" in caplog.text


def test_reward_lengths_every_pair_too_long_is_an_error(caplog):
    with raises_naming(PreferenceDataError, "max_length=2", "3 of 3 pairs longer", "longest: 6 tokens, row 2"):
        check_reward_pair_lengths(reward_pairs([3, 4, 6], [1, 1, 1]), max_length=2)
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        assert len(check_reward_pair_lengths(reward_pairs([3], [3]), max_length=3)) == 1  # equal to max_length fits
        assert len(check_reward_pair_lengths(reward_pairs([300], [3]), max_length=None)) == 1
    assert caplog.text == ""


def test_reward_lengths_streamed_pairs_are_filtered_with_a_warning(caplog):
    rows = [{"chosen_ids": [2] * n, "rejected_ids": [3]} for n in (1, 9, 2)]
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        kept = check_reward_pair_lengths(IterableDataset.from_generator(lambda: iter(rows)), max_length=5)
    assert [len(row["chosen_ids"]) for row in kept] == [1, 2]
    assert "dropped as they are read, uncounted" in caplog.text


def test_reward_command_trainer_drops_what_trl_drops_and_says_so(tiny_reward_model_path, tmp_path, caplog):
    """The CLI's `reward` trainer keeps exactly the pairs TRL's RewardTrainer keeps, and counts the others."""
    import trl

    from trl_extras.scripts.reward import RewardTrainer

    words = ["good", "nice", "bad " * 12, "great", "dull " * 12, "okay"]
    dataset = Dataset.from_list([{"chosen": w, "rejected": "meh"} for w in words])
    kept = {}
    for trainer_class in (trl.RewardTrainer, RewardTrainer):
        args = trl.RewardConfig(str(tmp_path / trainer_class.__module__), max_length=8, bf16=False, report_to="none")
        with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
            caplog.clear()
            trainer = trainer_class(model=tiny_reward_model_path, args=args, train_dataset=dataset)
        kept[trainer_class] = ([list(ids) for ids in trainer.train_dataset["chosen_ids"]], caplog.text)
    assert kept[RewardTrainer][0] == kept[trl.RewardTrainer][0] and len(kept[RewardTrainer][0]) == 4
    assert kept[trl.RewardTrainer][1] == ""  # TRL's own filter says nothing
    assert "train dataset: dropped 2 of 6 pairs" in kept[RewardTrainer][1]


# =====================================================================================================================
# reward functions: what they return and what they raise


def always(value):
    def constant_reward(prompts, completions, **kwargs):
        return [value] * len(completions)

    return constant_reward


def one_bad(value, row=1):
    def one_bad_reward(prompts, completions, **kwargs):
        rewards = [0.5] * len(completions)
        rewards[row] = value
        return rewards

    return one_bad_reward


def failing_reward(prompts, completions, **kwargs):
    raise KeyError("answer")


REWARD_CASES = {
    "inf": (one_bad(math.inf), ["'one_bad_reward'", "inf, not a finite number", "row 1", "'What is 2+2?'"]),
    "minus_inf": (one_bad(-math.inf), ["-inf, not a finite number", "row 1"]),
    "nan": (one_bad(math.nan), ["nan, not a finite number", "row 1"]),
    "string": (always("0.5"), ["'constant_reward'", "'0.5' (str), not a number", "row 0"]),
    "bool": (one_bad(True, 0), ["True (bool), not a number", "row 0"]),
    "dict": (one_bad({"score": 1}), ["(dict), not a number"]),
    "too_few": (lambda prompts, completions, **kw: [1.0], ["returned 1 rewards for 3 completions"]),
    "not_a_list": (lambda prompts, completions, **kw: 1.0, ["returned 1.0 (float)", "expected a list of 3"]),
    "raises": (failing_reward, ["'failing_reward' raised KeyError", "answer"]),
    "tensor_with_inf": (lambda prompts, completions, **kw: torch.tensor([1.0, math.inf, 0.0]), ["row 1", "inf"]),
}
PROMPTS = ["The sky is", "What is 2+2?", [user("Hi there")]]


@pytest.mark.parametrize("func, needles", REWARD_CASES.values(), ids=REWARD_CASES)
def test_reward_function_output(func, needles):
    checked = CheckedRewardFunc(func)
    with raises_naming(RewardFunctionError, *needles):
        checked(prompts=PROMPTS, completions=["a", "b", "c"])


def test_reward_none_is_trls_convention_and_passes():
    checked = check_reward_funcs(one_bad(None))
    assert checked(prompts=PROMPTS, completions=["a", "b", "c"]) == [0.5, None, 0.5]


def test_reward_numpy_and_tensor_values_pass():
    checked = CheckedRewardFunc(lambda prompts, completions, **kw: np.array([1, 2, 3], dtype=np.float32))
    assert checked(prompts=PROMPTS, completions=["a", "b", "c"]) == [1.0, 2.0, 3.0]
    checked = CheckedRewardFunc(lambda prompts, completions, **kw: [torch.tensor(0.5), np.float64(1.0), 2])
    assert checked(prompts=PROMPTS, completions=["a", "b", "c"]) == [torch.tensor(0.5), 1.0, 2]


def test_async_reward_function_is_checked_and_stays_async():
    from trl.trainer.utils import is_async_callable

    async def judge(prompts, completions, **kwargs):
        return [math.inf] * len(completions)

    checked = check_reward_funcs([judge])[0]
    assert is_async_callable(checked)
    with raises_naming(RewardFunctionError, "'judge'", "row 0"):
        asyncio.run(checked(prompts=PROMPTS, completions=["a", "b", "c"]))


def test_wrapped_reward_keeps_its_name_and_is_not_wrapped_twice():
    from trl.trainer.utils import get_callable_name

    checked = check_reward_funcs([failing_reward, "org/reward-model"])
    assert get_callable_name(checked[0]) == "failing_reward" and checked[1] == "org/reward-model"
    assert check_reward_funcs(checked)[0] is checked[0]


def test_reward_entry_of_the_wrong_type():
    with raises_naming(RewardFunctionError, "reward_funcs[1]", "expected a reward function", "42 (int)"):
        check_reward_funcs([failing_reward, 42])


# =====================================================================================================================
# configs: every trainer's config, built directly (the CLI reaches the same checks, see below)


def _remax(**kw):
    from trl_extras import ReMaxConfig

    return ReMaxConfig("/tmp/hostile", **{"bf16": False, "per_device_train_batch_size": 2, **kw})


def _ppo(**kw):
    from trl_extras import PPOConfig

    return PPOConfig("/tmp/hostile", **{"bf16": False, "per_device_train_batch_size": 2, **kw})


def _mdpo(**kw):
    from trl_extras import MDPOConfig

    return MDPOConfig("/tmp/hostile", bf16=False, **kw)


def _unlikelihood(**kw):
    from trl_extras import UnlikelihoodConfig

    return UnlikelihoodConfig("/tmp/hostile", bf16=False, **kw)


def _diffusion(**kw):
    from trl_extras import DiffusionDPOConfig

    return DiffusionDPOConfig("/tmp/hostile", bf16=False, **kw)


CONFIG_CASES = {
    "remax_beta_negative": (_remax, {"beta": -0.1}, "`beta`"),
    "remax_beta_nan": (_remax, {"beta": math.nan}, "`beta`"),
    "remax_max_completion_length_0": (_remax, {"max_completion_length": 0}, "`max_completion_length`"),
    "remax_temperature_0": (_remax, {"temperature": 0.0}, "`temperature`"),
    "remax_top_p_above_1": (_remax, {"top_p": 1.5}, "`top_p`"),
    "remax_batch_size_0": (_remax, {"per_device_train_batch_size": 0}, "`per_device_train_batch_size`"),
    "remax_accumulation_0": (_remax, {"gradient_accumulation_steps": 0}, "`gradient_accumulation_steps`"),
    "remax_learning_rate_negative": (_remax, {"learning_rate": -1e-5}, "`learning_rate`"),
    "remax_num_generations_0": (_remax, {"num_generations": 0}, "`num_generations`"),
    "remax_loss_type_unknown": (_remax, {"loss_type": "foo"}, "`loss_type`"),
    "remax_num_iterations_0": (_remax, {"num_iterations": 0}, "`num_iterations`"),
    "remax_seed_negative": (_remax, {"seed": -1}, "`seed`"),
    "remax_max_steps_0": (_remax, {"max_steps": 0}, "`max_steps`"),
    "remax_scale_rewards_unknown": (_remax, {"scale_rewards": "foo"}, "`scale_rewards`"),
    "ppo_kl_coef_negative": (_ppo, {"kl_coef": -0.05}, "`kl_coef`"),
    "ppo_num_ppo_epochs_0": (_ppo, {"num_ppo_epochs": 0}, "`num_ppo_epochs`"),
    "ppo_max_completion_length_negative": (_ppo, {"max_completion_length": -4}, "`max_completion_length`"),
    "ppo_eval_batch_size_0": (_ppo, {"per_device_eval_batch_size": 0}, "`per_device_eval_batch_size`"),
    "ppo_weight_decay_negative": (_ppo, {"weight_decay": -0.1}, "`weight_decay`"),
    "mdpo_beta_0": (_mdpo, {"beta": 0.0}, "`beta`"),
    "mdpo_beta_negative": (_mdpo, {"beta": -0.1}, "`beta`"),
    "mdpo_loss_type_unknown": (_mdpo, {"loss_type": ["foo"]}, "`loss_type`"),
    "mdpo_max_length_0": (_mdpo, {"max_length": 0}, "`max_length`"),
    "mdpo_truncation_mode_unknown": (_mdpo, {"truncation_mode": "middle"}, "`truncation_mode`"),
    "mdpo_conditional_weight_negative": (_mdpo, {"conditional_weight": -1.0}, "conditional_weight"),
    "mdpo_loss_weights_nan": (_mdpo, {"loss_type": ["sigmoid"], "loss_weights": [math.nan]}, "`loss_weights`"),
    "unlikelihood_max_length_negative": (_unlikelihood, {"max_length": -3}, "`max_length`"),
    "unlikelihood_rejected_weight_negative": (_unlikelihood, {"rejected_weight": -1.0}, "rejected_weight"),
    "unlikelihood_type_unknown": (_unlikelihood, {"unlikelihood_type": "word"}, "unlikelihood_type"),
    "unlikelihood_learning_rate_nan": (_unlikelihood, {"learning_rate": math.nan}, "`learning_rate`"),
    "unlikelihood_epochs_0": (_unlikelihood, {"num_train_epochs": 0}, "`num_train_epochs`"),
    "diffusion_beta_0": (_diffusion, {"beta": 0.0}, "beta"),
    "diffusion_batch_size_0": (_diffusion, {"per_device_train_batch_size": 0}, "`per_device_train_batch_size`"),
    "diffusion_learning_rate_negative": (_diffusion, {"learning_rate": -1.0}, "`learning_rate`"),
    "diffusion_max_grad_norm_nan": (_diffusion, {"max_grad_norm": math.nan}, "`max_grad_norm`"),
}


@pytest.mark.parametrize("build, kwargs, field", CONFIG_CASES.values(), ids=CONFIG_CASES)
def test_config_names_the_field(build, kwargs, field):
    with raises_naming(ValueError, field):
        build(**kwargs)


def test_remax_beta_0_is_no_kl_and_allowed():
    assert _remax(beta=0.0).beta == 0.0  # GRPO's default: the KL term is off


def test_loss_type_tables_match_trls_help():
    import re
    from dataclasses import fields

    from trl import DPOConfig, GRPOConfig

    dpo_help = {f.name: f for f in fields(DPOConfig)}["loss_type"].metadata["help"]
    grpo_help = {f.name: f for f in fields(GRPOConfig)}["loss_type"].metadata["help"]
    assert set(re.findall(r"`'(\w+)'`", dpo_help)) == set(DPO_LOSS_TYPES)
    assert set(GRPO_LOSS_TYPES) <= set(re.findall(r"'(\w+)'", grpo_help))


def test_check_config_reads_a_namespace_before_the_config_exists():
    from types import SimpleNamespace

    from trl import DPOConfig

    with raises_naming(ValueError, "`beta` must be a finite number > 0", "got -1"):
        check_config(SimpleNamespace(beta=-1, loss_type=["sigmoid"]), DPOConfig)


# =====================================================================================================================
# the CLI: everything below fails before a model loads (the model path given does not even exist, so an error about
# the data proves the data was checked first)

NO_MODEL = "/nonexistent/model-dir"


def run(argv, capsys):
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out + err


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


CLI_FLAG_CASES = {
    "dpo_beta_0": ("dpo", ["--beta", "0"], "`beta` must be a finite number > 0"),
    "dpo_beta_negative": ("dpo", ["--beta", "-1"], "`beta`"),
    "dpo_loss_type_unknown": ("dpo", ["--loss_type", "foo"], "`loss_type` must be one or more of 'sigmoid'"),
    "dpo_max_length_0": ("dpo", ["--max_length", "0"], "`max_length`"),
    "dpo_truncation_mode_unknown": ("dpo", ["--truncation_mode", "middle"], "--truncation_mode"),
    "dpo_batch_size_0": ("dpo", ["--per_device_train_batch_size", "0"], "`per_device_train_batch_size`"),
    "dpo_learning_rate_text": ("dpo", ["--learning_rate", "fast"], "learning_rate"),
    "grpo_max_completion_length_0": ("grpo", ["--max_completion_length", "0"], "`max_completion_length`"),
    "grpo_num_generations_0": ("grpo", ["--num_generations", "0"], "`num_generations`"),
    "grpo_temperature_0": ("grpo", ["--temperature", "0"], "`temperature`"),
    "grpo_loss_type_unknown": ("grpo", ["--loss_type", "foo"], "`loss_type` must be one of 'grpo'"),
    "grpo_beta_negative": ("grpo", ["--beta", "-0.1"], "`beta`"),
    "rloo_max_completion_length_0": ("rloo", ["--max_completion_length", "0"], "`max_completion_length`"),
    "rloo_num_generations_0": ("rloo", ["--num_generations", "0"], "`num_generations`"),
    "sft_loss_type_unknown": ("sft", ["--loss_type", "foo"], "--loss_type"),
    "sft_max_length_negative": ("sft", ["--max_length", "-1"], "`max_length`"),
    "reward_max_length_0": ("reward", ["--max_length", "0"], "`max_length`"),
    "reward_accumulation_0": ("reward", ["--gradient_accumulation_steps", "0"], "`gradient_accumulation_steps`"),
    "unlikelihood_type_unknown": ("unlikelihood", ["--unlikelihood_type", "word"], "unlikelihood_type"),
    "remax_beta_negative": ("remax", ["--beta", "-1"], "`beta`"),
    "ppo_kl_coef_negative": ("ppo", ["--kl_coef", "-1"], "`kl_coef`"),
    "mdpo_beta_0": ("mdpo", ["--beta", "0"], "`beta`"),
    "diffusion_dpo_beta_0": ("diffusion-dpo", ["--beta", "0"], "beta"),
    "unknown_flag": ("dpo", ["--betta", "0.1"], "unknown key 'betta'"),
    "flag_of_another_trainer": ("dpo", ["--num_generations", "4"], "belongs to"),
    "max_steps_0": ("sft", ["--max_steps", "0"], "`max_steps`"),
    "seed_negative": ("grpo", ["--seed", "-5"], "`seed`"),
    "grpo_one_generation": ("grpo", ["--num_generations", "1"], "at least 2 generations per prompt"),
    "grpo_generations_do_not_divide_batch": (
        "grpo",
        ["--num_generations", "3"],
        "must be divisible by num_generations",
    ),
    "rloo_one_generation": ("rloo", ["--num_generations", "1"], "at least 2 generations per prompt"),
    "ppo_mini_batches_0": ("ppo", ["--num_mini_batches", "0"], "`num_mini_batches`"),
    "remax_group_scaling_one_sample": ("remax", ["--scale_rewards", "group"], "needs `num_generations > 1`"),
    "dpo_loss_weights_length": ("dpo", ["--loss_weights", "1", "2"], "`loss_weights` must have the same length"),
}


@pytest.mark.parametrize("command, flags, needle", CLI_FLAG_CASES.values(), ids=CLI_FLAG_CASES)
def test_cli_flag(command, flags, needle, capsys, tmp_path):
    config = REPO / "configs" / f"{command.replace('-', '_')}.yaml"
    status, output = run([command, "--config", config, "--output_dir", tmp_path, *flags], capsys)
    assert status == cli.EXIT_CONFIG, output[-2000:]
    assert needle in output and "Traceback" not in output, output[-2000:]


def _yaml(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


CLI_YAML_CASES = {
    "unknown_key": ("model_name_or_path: x\nlearning_rat: 1e-5\n", "unknown key 'learning_rat'", "learning_rate"),
    "key_of_another_trainer": ("kl_coef: 0.1\n", "'kl_coef' is not an option of `trl-extras dpo`", "ppo"),
    "not_a_mapping": ("- a\n- b\n", "must hold a mapping", "list"),
    "invalid_yaml": ("beta: [0.1\n", "is not valid YAML", "config.yaml"),
    "loss_type_list_unknown": ("loss_type: [foo]\n", "`loss_type`", "'sigmoid'"),
    "beta_string": ("beta: high\n", "beta", "high"),
}


@pytest.mark.parametrize("text, needle, needle2", CLI_YAML_CASES.values(), ids=CLI_YAML_CASES)
def test_cli_yaml(text, needle, needle2, capsys, tmp_path):
    status, output = run(["dpo", "--config", _yaml(tmp_path, text), "--output_dir", tmp_path], capsys)
    assert status == cli.EXIT_CONFIG, output[-2000:]
    assert needle in output and needle2 in output and "Traceback" not in output, output[-2000:]


def test_cli_config_file_not_found(capsys, tmp_path):
    status, output = run(["dpo", "--config", tmp_path / "nope.yaml"], capsys)
    assert status == cli.EXIT_CONFIG and "file not found" in output and "nope.yaml" in output


def _data_case(tmp_path, rows=None, text=None, suffix=".jsonl"):
    path = tmp_path / f"data{suffix}"
    if text is not None:
        path.write_text(text)
    else:
        write_jsonl(path, rows)
    return path


CLI_DATA_CASES = {
    "empty_jsonl": ("dpo", None, "", ["data file is empty", "data.jsonl"]),
    "blank_lines_jsonl": ("grpo", None, "\n\n  \n", ["data file is empty", "data.jsonl"]),
    "malformed_jsonl": ("dpo", None, '{"prompt": "a", "chosen": \n', ["cannot read", "data.jsonl"]),
    "missing_chosen_column": ("dpo", [{"prompt": "a", "rejected": "b"}], None, ["column named 'chosen'"]),
    "empty_chosen_row": ("dpo", [pair(), pair(chosen="")], None, ["Row 1, column 'chosen'"]),
    "chosen_role_user": ("dpo", [conv_pair(chosen_role="user")], None, ["Row 0, column 'chosen'", "role 'user'"]),
    "reward_missing_rejected": ("reward", [{"prompt": "a", "chosen": "b"}], None, ["column named 'rejected'"]),
    "grpo_missing_prompt": ("grpo", [{"question": "a"}], None, ["column named 'prompt'"]),
    "rloo_empty_prompt": ("rloo", [{"prompt": "a"}, {"prompt": " "}], None, ["Row 1, column 'prompt'"]),
    "remax_none_prompt": ("remax", [{"prompt": "a"}, {"prompt": None}], None, ["Row 1, column 'prompt'"]),
    "ppo_missing_prompt": ("ppo", [{"query": "a"}], None, ["column named 'prompt'"]),
    "unlikelihood_same_pair": ("unlikelihood", [pair(chosen=" x", rejected=" x")], None, ["column 'rejected'"]),
    "sft_missing_text_column": ("sft", [{"txt": "hello"}], None, ["Column 'text'", "only ['txt']"]),
    "sft_empty_text": ("sft", [{"text": "hello"}, {"text": ""}], None, ["Row 1, column 'text'"]),
    "sft_completion_role_user": (
        "sft",
        [{"prompt": [user("hi")], "completion": [user("again")]}],
        None,
        ["Row 0, column 'completion'", "role 'user'"],
    ),
}


@pytest.mark.parametrize("command, rows, text, needles", CLI_DATA_CASES.values(), ids=CLI_DATA_CASES)
def test_cli_data_is_checked_before_the_model_loads(command, rows, text, needles, capsys, tmp_path):
    data = _data_case(tmp_path, rows, text)
    argv = [command, "--model_name_or_path", NO_MODEL, "--dataset_name", data, "--output_dir", tmp_path / "out"]
    if command in ("grpo", "rloo", "remax", "ppo"):
        argv += ["--reward_funcs", "think_format_reward"]
    status, output = run(argv, capsys)
    assert status != 0, output[-2000:]
    for needle in needles:
        assert needle in output, output[-2000:]
    assert "Traceback" not in output and NO_MODEL not in output, output[-2000:]


def test_cli_on_invalid_drop_drops_and_counts_before_the_model_loads(capsys, tmp_path, caplog):
    data = write_jsonl(tmp_path / "data.jsonl", [pair(), pair(chosen=""), pair()])
    argv = ["dpo", "--model_name_or_path", NO_MODEL, "--dataset_name", data, "--on_invalid", "drop"]
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        status, output = run([*argv, "--output_dir", tmp_path / "out"], capsys)
    assert "dropped 1 of 3 rows" in caplog.text and "row 1" in caplog.text
    assert status != 0 and "model directory not found" in output  # the data passed; the model was next


CLI_PATH_CASES = {
    "data_file_not_found": (["--dataset_name", "/nonexistent/data.jsonl"], ["data file not found"]),
    "local_dataset_dir_not_found": (["--dataset_name", "./no_such_dataset_dir"], ["local dataset path not found"]),
    "missing_eval_split": (["--dataset_name", "DATA", "--eval_strategy", "steps"], ["dataset_test_split", "'test'"]),
    "model_dir_not_found": (["--dataset_name", "DATA"], ["model_name_or_path", "model directory not found"]),
    "4bit_without_peft": (["--dataset_name", "DATA", "--load_in_4bit", "true", "--model_name_or_path", "REPO"], ["load_in_4bit", "use_peft"]),
}  # fmt: skip


@pytest.mark.parametrize("flags, needles", CLI_PATH_CASES.values(), ids=CLI_PATH_CASES)
def test_cli_paths(flags, needles, capsys, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [pair(), pair()])
    flags = [{"DATA": str(data), "REPO": str(REPO)}.get(flag, flag) for flag in flags]
    argv = ["dpo", "--model_name_or_path", NO_MODEL, *flags, "--output_dir", tmp_path / "out"]
    status, output = run(argv, capsys)
    assert status != 0, output[-2000:]
    for needle in needles:
        assert needle in output, output[-2000:]
    assert "Traceback" not in output


CLI_REWARD_CASES = {
    "unknown_name": (["--reward_funcs", "acuracy_reward"], ["reward_funcs[0]", "Did you mean 'accuracy_reward'"]),
    "bad_import_path": (["--reward_funcs", "no_such_module:score"], ["reward_funcs[0]", "cannot import"]),
    "missing_attribute": (["--reward_funcs", "math:no_such_function"], ["reward_funcs[0]", "no attribute"]),
    "not_callable": (["--reward_funcs", "math:pi"], ["reward_funcs[0]", "not a function"]),
    "reward_model_dir_missing": (["--reward_model_name_or_path", "./no_such_rm"], ["reward_model_name_or_path"]),
    "no_reward_at_all": ([], ["reward_funcs: required"]),
}


@pytest.mark.parametrize("flags, needles", CLI_REWARD_CASES.values(), ids=CLI_REWARD_CASES)
def test_cli_reward_functions(flags, needles, capsys, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    argv = ["grpo", "--model_name_or_path", NO_MODEL, "--dataset_name", data, *flags, "--output_dir", tmp_path]
    status, output = run(argv, capsys)
    assert status == cli.EXIT_CONFIG, output[-2000:]
    for needle in needles:
        assert needle in output, output[-2000:]
    assert "Traceback" not in output


# =====================================================================================================================
# trainers on a tiny model: what can only be seen once a batch is generated or tokenised

RL_PROMPTS = ["The capital of France is", "I hated it", "What is the capital", "The sky is"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from trl_extras.testing import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("hostile-lm"))


class SwitchableReward:
    """One reward function for every case of a trainer: `mode` says what it returns next."""

    def __init__(self):
        self.__name__ = "switchable_reward"
        self.mode = "fine"

    def __call__(self, prompts, completions, **kwargs):
        n = len(completions)
        if self.mode == "inf":
            return [math.inf] + [0.0] * (n - 1)
        if self.mode == "nan":
            return [0.0] * (n - 1) + [math.nan]
        if self.mode == "strings":
            return ["good"] * n
        if self.mode == "raises":
            raise ZeroDivisionError("division by zero in my metric")
        if self.mode == "none":
            return [None] + [1.0] * (n - 1)
        return [float(len(c)) for c in completions]


def _rl_args(config_class, tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_completion_length=4,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return config_class(**kwargs)


@pytest.fixture(scope="module")
def remax_trainer(tiny_lm, tmp_path_factory):
    from trl_extras import ReMaxConfig, ReMaxTrainer

    reward = SwitchableReward()
    args = _rl_args(ReMaxConfig, tmp_path_factory.mktemp("remax"))
    trainer = ReMaxTrainer(
        model=tiny_lm, reward_funcs=reward, args=args, train_dataset=Dataset.from_dict({"prompt": RL_PROMPTS})
    )
    return trainer, reward


@pytest.fixture(scope="module")
def ppo_trainer(tiny_lm, tmp_path_factory):
    from trl_extras import PPOConfig, PPOTrainer

    reward = SwitchableReward()
    args = _rl_args(PPOConfig, tmp_path_factory.mktemp("ppo"), num_ppo_epochs=1, value_model_init="policy")
    trainer = PPOTrainer(
        model=tiny_lm, reward_funcs=reward, args=args, train_dataset=Dataset.from_dict({"prompt": RL_PROMPTS})
    )
    return trainer, reward


TRAINER_REWARD_CASES = {
    "inf": ("inf", ["'switchable_reward'", "inf, not a finite number", "row 0", "prompt"]),
    "nan": ("nan", ["'switchable_reward'", "nan, not a finite number", "row 3"]),
    "strings": ("strings", ["'good' (str), not a number", "row 0"]),
    "raises": ("raises", ["'switchable_reward' raised ZeroDivisionError", "division by zero in my metric"]),
}


@pytest.mark.parametrize("trainer_fixture", ["remax_trainer", "ppo_trainer"])
@pytest.mark.parametrize("mode, needles", TRAINER_REWARD_CASES.values(), ids=TRAINER_REWARD_CASES)
def test_trainer_bad_reward_stops_at_the_first_step(trainer_fixture, mode, needles, request):
    trainer, reward = request.getfixturevalue(trainer_fixture)
    reward.mode = mode
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with raises_naming(RewardFunctionError, *needles):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # no step was taken


@pytest.mark.parametrize("trainer_fixture", ["remax_trainer", "ppo_trainer"])
def test_trainer_none_reward_trains_finite(trainer_fixture, request):
    trainer, reward = request.getfixturevalue(trainer_fixture)
    reward.mode = "none"
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_grpo_as_the_cli_builds_it_checks_rewards(tiny_lm, tmp_path):
    """The stock GRPOTrainer gets its reward functions from `reward_funcs_from_args`, which checks them."""
    import trl

    from trl_extras.scripts._common import reward_funcs_from_args

    module = tmp_path / "hostile_rewards.py"
    module.write_text("def infinite(completions, **kwargs):\n    return [float('inf')] * len(completions)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        script_args = type(
            "Args",
            (),
            {"reward_model_name_or_path": None, "reward_funcs": ["hostile_rewards:infinite"], "dataset_name": "x"},
        )()
        reward_funcs = reward_funcs_from_args(script_args)
    finally:
        sys.path.remove(str(tmp_path))
    args = _rl_args(trl.GRPOConfig, tmp_path / "out", num_generations=2)
    trainer = trl.GRPOTrainer(
        model=tiny_lm, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_dict({"prompt": RL_PROMPTS})
    )
    assert trainer.reward_func_names == ["infinite"]
    with raises_naming(RewardFunctionError, "'infinite'", "inf, not a finite number", "row 0"):
        trainer.train()


# preference trainers: max_length against the tokenised rows


def _long_prompt_rows(tokenizer, n_long, n_short=8):
    """`n_short` rows whose prompt has 5 tokens, then `n_long` rows whose prompt has more than 20."""
    rows = [pair("The sky is", " blue.", " green.")] * n_short + [
        pair("The sky is" + " very" * 20, " blue.", " green.")
    ] * n_long
    lengths = [len(tokenizer(row["prompt"])["input_ids"]) for row in rows]
    assert max(lengths[:n_short] or [0]) < 12 and min(lengths[n_short:] or [99]) > 20
    return Dataset.from_list(rows)


def _unlikelihood_args(tmp_path, **overrides):
    from trl_extras import UnlikelihoodConfig

    kwargs = dict(
        output_dir=str(tmp_path),
        max_steps=1,
        report_to="none",
        bf16=False,
        per_device_train_batch_size=2,
        save_strategy="no",
    )
    return UnlikelihoodConfig(**{**kwargs, **overrides})


def test_unlikelihood_every_prompt_too_long(tiny_lm, tmp_path):
    from trl_extras import UnlikelihoodTrainer

    dataset = _long_prompt_rows(AutoTokenizer.from_pretrained(tiny_lm), n_long=8, n_short=0)
    with raises_naming(PreferenceDataError, "max_length=12", "8 of 8 rows", "Raise max_length"):
        UnlikelihoodTrainer(model=tiny_lm, args=_unlikelihood_args(tmp_path, max_length=12), train_dataset=dataset)


def test_unlikelihood_some_prompts_too_long_error_then_opt_in_drop(tiny_lm, tmp_path, caplog):
    from trl_extras import UnlikelihoodTrainer

    dataset = _long_prompt_rows(AutoTokenizer.from_pretrained(tiny_lm), n_long=4, n_short=4)
    with raises_naming(PreferenceDataError, "4 of 8 rows", "drop_long_prompts=True"):
        UnlikelihoodTrainer(model=tiny_lm, args=_unlikelihood_args(tmp_path, max_length=12), train_dataset=dataset)
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        trainer = UnlikelihoodTrainer(
            model=tiny_lm,
            args=_unlikelihood_args(tmp_path, max_length=12, drop_long_prompts=True),
            train_dataset=dataset,
        )
    assert len(trainer.train_dataset) == 4 and "dropped 4 of 8 rows" in caplog.text


def test_unlikelihood_cut_completions_are_reported(tiny_lm, tmp_path, caplog):
    from trl_extras import UnlikelihoodTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    long_completion = " and" * 30
    dataset = Dataset.from_list([pair("The sky is", long_completion, " green.")] * 4)
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        trainer = UnlikelihoodTrainer(
            model=tiny_lm, args=_unlikelihood_args(tmp_path, max_length=10), train_dataset=dataset
        )
    full = len(trainer.train_dataset[0]["prompt_ids"]) + len(trainer.train_dataset[0]["chosen_ids"])
    assert full > 10 and len(tokenizer(long_completion)["input_ids"]) > 20
    assert "in 4 of 4 rows" in caplog.text and f"prompt + chosen: {full} tokens" in caplog.text


def test_dpo_as_the_cli_builds_it_refuses_rows_it_would_drop(tiny_lm, tmp_path):
    from trl_extras.scripts.dpo import DPOConfig, DPOTrainer

    dataset = _long_prompt_rows(AutoTokenizer.from_pretrained(tiny_lm), n_long=4, n_short=4)
    args = DPOConfig(str(tmp_path), max_length=12, report_to="none", bf16=False, max_steps=1)
    with raises_naming(PreferenceDataError, "4 of 8 rows", "max_length=12"):
        DPOTrainer(model=tiny_lm, args=args, train_dataset=dataset)


def test_trl_hook_the_length_check_relies_on():
    """`PreferenceLengthCheck` calls `DPOTrainer._prepare_dataset` with a copy of `args` whose `max_length` is None,
    which must turn TRL's filter of long prompts off, and counts what that filter would have dropped."""
    import inspect

    from trl import DPOTrainer

    assert list(inspect.signature(DPOTrainer._prepare_dataset).parameters) == [
        "self",
        "dataset",
        "processing_class",
        "args",
        "dataset_name",
    ]
    source = inspect.getsource(DPOTrainer._prepare_dataset)
    assert 'if args.max_length is not None and args.truncation_mode == "keep_start":' in source
    assert 'len(example["prompt_ids"]) < args.max_length' in source
    assert 'self._prepare_dataset(train_dataset, processing_class, args, "train")' in inspect.getsource(
        DPOTrainer.__init__
    )


# every trainer checks its data (and its arguments) before it loads a model: the model path below does not exist, so
# any error about the data or the arguments proves it came first


def _trainer_case(name, kwargs_of):
    def build(tmp_path):
        import trl_extras

        trainer_class = getattr(trl_extras, f"{name}Trainer")
        return trainer_class(model=NO_MODEL, **kwargs_of(tmp_path))

    return build


def _pick_a_pic(**row):
    return Dataset.from_list(
        [{"caption": "a red square", "jpg_0": png_bytes(), "jpg_1": png_bytes((6, 6)), "label_0": 1.0, **row}]
    )


TRAINER_EARLY_CASES = {
    "unlikelihood_empty_rejected": (
        _trainer_case("Unlikelihood", lambda p: {"args": _unlikelihood_args(p), "train_dataset": Dataset.from_list([pair(rejected="")])}),
        PreferenceDataError, ["Row 0, column 'rejected'"],
    ),
    "unlikelihood_ref_model_given": (
        _trainer_case("Unlikelihood", lambda p: {"ref_model": NO_MODEL, "args": _unlikelihood_args(p)}),
        ValueError, ["uses no reference model"],
    ),
    "unlikelihood_dpo_config": (
        _trainer_case("Unlikelihood", lambda p: {"args": __import__("trl").DPOConfig(str(p), bf16=False)}),
        TypeError, ["UnlikelihoodConfig"],
    ),
    "remax_none_prompt": (
        _trainer_case("ReMax", lambda p: {"reward_funcs": failing_reward, "args": _remax(), "train_dataset": Dataset.from_dict({"prompt": ["a", None]})}),
        PreferenceDataError, ["Row 1, column 'prompt'"],
    ),
    "remax_grpo_config": (
        _trainer_case("ReMax", lambda p: {"reward_funcs": failing_reward, "args": __import__("trl").GRPOConfig(str(p), bf16=False, per_device_train_batch_size=8)}),
        TypeError, ["ReMaxConfig"],
    ),
    "remax_reward_not_callable": (
        _trainer_case("ReMax", lambda p: {"reward_funcs": [failing_reward, 3.5], "args": _remax(), "train_dataset": Dataset.from_dict({"prompt": ["a"]})}),
        RewardFunctionError, ["reward_funcs[1]", "3.5 (float)"],
    ),
    "ppo_missing_prompt": (
        _trainer_case("PPO", lambda p: {"reward_funcs": failing_reward, "args": _ppo(), "train_dataset": Dataset.from_dict({"query": ["a"]})}),
        PreferenceDataError, ["column named 'prompt'"],
    ),
    "ppo_reward_not_callable": (
        _trainer_case("PPO", lambda p: {"reward_funcs": {"not": "callable"}, "args": _ppo(), "train_dataset": Dataset.from_dict({"prompt": ["a"]})}),
        RewardFunctionError, ["reward_funcs", "(dict)"],
    ),
    "mdpo_no_images": (
        _trainer_case("MDPO", lambda p: {"args": _mdpo(), "train_dataset": Dataset.from_list([pair()])}),
        PreferenceDataError, ["'images' (list) or 'image' column"],
    ),
    "mdpo_image_count_mismatch": (
        _trainer_case("MDPO", lambda p: {"args": _mdpo(), "train_dataset": Dataset.from_list([{**PREFERENCE_CASES["image_count_mismatch"][0][0]}])}),
        PreferenceDataError, ["as many images as image placeholders"],
    ),
    "diffusion_corrupt_image": (
        _trainer_case("DiffusionDPO", lambda p: {"args": _diffusion(), "train_dataset": _pick_a_pic(jpg_1=b"garbage")}),
        PreferenceDataError, ["Row 0, column 'jpg_1'", "a readable image"],
    ),
    "diffusion_empty_caption": (
        _trainer_case("DiffusionDPO", lambda p: {"args": _diffusion(), "train_dataset": _pick_a_pic(caption=" ")}),
        PreferenceDataError, ["Row 0, column 'caption'"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("build, error, needles", TRAINER_EARLY_CASES.values(), ids=TRAINER_EARLY_CASES)
def test_trainer_checks_before_loading_a_model(build, error, needles, tmp_path):
    with raises_naming(error, *needles) as info:
        build(tmp_path)
    assert NO_MODEL not in str(info.value)
