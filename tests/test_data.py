"""The preference data layer: every accepted format and conversion on hand-written rows, and bad input."""

import io
import logging
import math
import pickle

import pytest
from datasets import Dataset, Image, List
from PIL import Image as PILImage
from trl.data_utils import maybe_extract_prompt, prepare_multimodal_messages

from trl_extras.data import (
    PreferenceDataError,
    image_pairs_to_preference,
    ranked_to_pairs,
    scored_to_pairs,
    validate_image_pair_dataset,
    validate_preference_dataset,
    validate_prompt_dataset,
)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def png_bytes(color="red", size=(4, 4)):
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A real PNG, a truncated PNG (opens, fails to decode), a file that is not an image, and a missing path."""
    directory = tmp_path_factory.mktemp("images")
    good = directory / "good.png"
    good.write_bytes(png_bytes("blue"))
    noisy = PILImage.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG")
    truncated = directory / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    not_image = directory / "notes.png"
    not_image.write_text("not an image")
    return {
        "good": str(good),
        "truncated": str(truncated),
        "not_image": str(not_image),
        "missing": str(directory / "x.png"),
    }


def pixel(image):
    return image.convert("RGB").getpixel((0, 0))


# TRL behaviour we rely on


def test_trl_helpers_we_reuse_behave_as_we_assume():
    explicit = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    assert maybe_extract_prompt(explicit) is explicit  # unchanged rows come back as the same object
    assert maybe_extract_prompt({"chosen": "The sky is blue.", "rejected": "The sky is green."}) == {
        "prompt": "The sky is",
        "chosen": " blue.",
        "rejected": " green.",
    }
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    with pytest.raises(ValueError, match="does not match"):
        prepare_multimodal_messages(prompt, images=[None, None])


def test_error_message_attributes_and_pickling():
    err = PreferenceDataError("a non-empty string", "'' (empty)", 3, "chosen")
    assert str(err) == "Row 3, column 'chosen': expected a non-empty string, got '' (empty)"
    assert (err.row, err.column, err.expected, err.got) == (3, "chosen", "a non-empty string", "'' (empty)")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.row, copy.column, copy.expected, str(copy)) == (3, "chosen", err.expected, str(err))
    assert str(PreferenceDataError("x", "y", column="c")) == "Column 'c': expected x, got y"
    assert str(PreferenceDataError("x", "y")) == "Dataset: expected x, got y"


# preference formats


def test_standard_explicit_prompt_is_returned_unchanged():
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": "Hi", "chosen": "!", "rejected": "?"},
    ]
    dataset = Dataset.from_list(rows)
    assert validate_preference_dataset(dataset) is dataset


def test_standard_implicit_prompt_is_extracted():
    dataset = Dataset.from_dict(
        {"chosen": ["The sky is blue.", "2 + 2 = 4"], "rejected": ["The sky is green.", "2 + 2 = 5"], "id": [7, 8]}
    )
    out = validate_preference_dataset(dataset)
    assert out.to_list() == [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "id": 7},
        {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5", "id": 8},
    ]
    assert out.column_names[:3] == ["prompt", "chosen", "rejected"]


def test_conversational_explicit_prompt_is_returned_unchanged():
    dataset = Dataset.from_list(
        [{"prompt": [user("Sky colour?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]}]
    )
    assert validate_preference_dataset(dataset).to_list() == dataset.to_list()


def test_conversational_implicit_prompt_is_extracted():
    dataset = Dataset.from_list(
        [
            {
                "chosen": [{"role": "system", "content": "Be brief."}, user("Sky colour?"), assistant("Blue.")],
                "rejected": [{"role": "system", "content": "Be brief."}, user("Sky colour?"), assistant("Green.")],
            }
        ]
    )
    assert validate_preference_dataset(dataset).to_list() == [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, user("Sky colour?")],
            "chosen": [assistant("Blue.")],
            "rejected": [assistant("Green.")],
        }
    ]


def test_redundant_string_prompt_next_to_full_conversations_is_replaced_as_trl_does():
    dataset = Dataset.from_list(
        [
            {
                "prompt": "Sky colour?",
                "chosen": [user("Sky colour?"), assistant("Blue.")],
                "rejected": [user("Sky colour?"), assistant("Green.")],
            }
        ]
    )
    assert validate_preference_dataset(dataset).to_list() == [
        {"prompt": [user("Sky colour?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]}
    ]


def test_vision_images_from_paths_and_bytes_become_image_features(image_files):
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    dataset = Dataset.from_dict(
        {
            "prompt": [prompt],
            "chosen": [[assistant("Blue.")]],
            "rejected": [[assistant("Red.")]],
            "images": [[image_files["good"]]],
        }
    )
    out = validate_preference_dataset(dataset, images="required")
    assert out.features["images"].feature == Image()
    assert pixel(out[0]["images"][0]) == (0, 0, 255)

    single = Dataset.from_dict(
        {"prompt": ["Colour?"], "chosen": ["Blue."], "rejected": ["Red."], "image": [png_bytes()]}
    )
    out = validate_preference_dataset(single)
    assert out.features["image"] == Image()
    assert pixel(out[0]["image"]) == (255, 0, 0)


def test_vision_plain_text_prompt_takes_any_number_of_images():
    # TRL inserts the placeholders itself when the prompt content is a string
    dataset = Dataset.from_dict(
        {
            "prompt": [[user("Compare.")], [user("Describe.")]],
            "chosen": [[assistant("Same.")], [assistant("Text.")]],
            "rejected": [[assistant("Different.")], [assistant("Cat.")]],
            "images": [[png_bytes("red"), png_bytes("blue")], []],
        }
    )
    assert len(validate_preference_dataset(dataset)) == 2


def test_prompt_dataset_standard_and_conversational():
    standard = Dataset.from_dict({"prompt": ["2 + 2 =", "3 + 3 ="], "answer": ["4", "6"]})
    assert validate_prompt_dataset(standard) is standard
    conversational = Dataset.from_dict({"prompt": [[user("2 + 2?")]], "answer": ["4"]})
    assert validate_prompt_dataset(conversational).to_list() == [{"prompt": [user("2 + 2?")], "answer": "4"}]


def test_iterable_dataset_is_checked_lazily(monkeypatch, caplog):
    import trl_extras.data._scan as scan_module

    monkeypatch.setattr(scan_module, "BATCH_SIZE", 2)
    dataset = Dataset.from_dict({"chosen": ["Say hi", "Say ", "Say yo", "Say ok"], "rejected": ["Say ho"] * 4})
    streamed = validate_preference_dataset(dataset.to_iterable_dataset(), on_invalid="drop")
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        rows = list(streamed)
    assert rows == [
        {"prompt": "Say h", "chosen": "i", "rejected": "o"},
        {"prompt": "Say", "chosen": " yo", "rejected": " ho"},
        {"prompt": "Say", "chosen": " ok", "rejected": " ho"},
    ]
    assert "validate_preference_dataset (rows 0-1): dropped 1 of 2 rows." in caplog.text
    assert "column 'chosen': expected a completion that is not a prefix of the other one" in caplog.text

    with pytest.raises(PreferenceDataError) as info:
        list(validate_preference_dataset(dataset.to_iterable_dataset()))
    assert (info.value.row, info.value.column) == (1, "chosen")


def test_iterable_dataset_reports_unreadable_images_and_decodes_the_rest():
    vision = Dataset.from_dict(
        {"prompt": ["Q", "R"], "chosen": ["A", "A"], "rejected": ["B", "B"], "images": [[png_bytes()], [b"junk"]]}
    ).cast_column("images", List(Image()))
    rows = iter(validate_preference_dataset(vision.to_iterable_dataset()))
    with pytest.raises(PreferenceDataError) as info:
        next(rows)  # the first batch holds both rows
    assert (info.value.row, info.value.column) == (1, "images")
    assert "expected a readable image, got 4 bytes" in str(info.value)

    (row,) = validate_preference_dataset(vision.to_iterable_dataset(), on_invalid="drop")
    assert pixel(row["images"][0]) == (255, 0, 0)


# scored and ranked feedback


SCORED = {
    "prompt": ["Sky?", "Sea?", "Tie?"],
    "completions": [["green", "blue", "grey", "red"], ["wet", "dry"], ["a", "b"]],
    "scores": [[2.0, 9.0, 5.0, 1.0], [3.0, 8.0], [4.0, 4.0]],
    "source": ["s0", "s1", "s2"],
}


def test_scored_best_vs_worst(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        out = scored_to_pairs(Dataset.from_dict(SCORED))
    assert out.to_list() == [
        {
            "chosen": "blue",
            "rejected": "red",
            "score_chosen": 9.0,
            "score_rejected": 1.0,
            "prompt": "Sky?",
            "source": "s0",
        },
        {
            "chosen": "dry",
            "rejected": "wet",
            "score_chosen": 8.0,
            "score_rejected": 3.0,
            "prompt": "Sea?",
            "source": "s1",
        },
    ]
    assert "scored_to_pairs: dropped 1 of 3 rows." in caplog.text
    assert "1 x column 'scores': expected at least two different scores (row 2)" in caplog.text


def test_scored_best_vs_all():
    out = scored_to_pairs(Dataset.from_dict(SCORED), strategy="best_vs_all")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [
        ("Sky?", "blue", "green"),
        ("Sky?", "blue", "grey"),
        ("Sky?", "blue", "red"),
        ("Sea?", "dry", "wet"),
    ]
    assert out["score_rejected"] == [2.0, 5.0, 1.0, 3.0]


def test_scored_best_vs_random_is_seeded_and_only_picks_worse_completions():
    dataset = Dataset.from_dict(
        {
            "prompt": [f"p{i}" for i in range(40)],
            "completions": [["a", "b", "c", "d"]] * 40,
            "scores": [[1, 9, 5, 9]] * 40,
        }
    )
    first = scored_to_pairs(dataset, strategy="best_vs_random", seed=1)
    assert first.to_list() == scored_to_pairs(dataset, strategy="best_vs_random", seed=1).to_list()
    assert set(first["chosen"]) == {"b"}  # the first of the two best; the other 9 is never a rejected one
    assert set(first["rejected"]) == {"a", "c"}
    assert first["rejected"] != scored_to_pairs(dataset, strategy="best_vs_random", seed=2)["rejected"]


def test_scored_custom_columns_conversational_completions_and_identical_texts():
    dataset = Dataset.from_dict(
        {
            "question": [[user("Hi")]],
            "responses": [[[assistant("Hello!")], [assistant("Hello!")], [assistant("Go away.")]]],
            "ratings": [[5, 1, 2]],
        }
    )
    out = scored_to_pairs(
        dataset,
        strategy="best_vs_all",
        prompt_column="question",
        completions_column="responses",
        scores_column="ratings",
    )
    # the copy of the best completion scored 1 is not a pair: chosen and rejected would be identical
    assert out.to_list() == [
        {
            "chosen": [assistant("Hello!")],
            "rejected": [assistant("Go away.")],
            "score_chosen": 5,
            "score_rejected": 2,
            "prompt": [user("Hi")],
        }
    ]


def test_ranked_best_first_all_and_adjacent():
    dataset = Dataset.from_dict({"prompt": ["Q"], "completions": [["best", "mid", "worst"]]})
    assert ranked_to_pairs(dataset).to_list() == [
        {"chosen": "best", "rejected": "mid", "prompt": "Q"},
        {"chosen": "best", "rejected": "worst", "prompt": "Q"},
        {"chosen": "mid", "rejected": "worst", "prompt": "Q"},
    ]
    assert ranked_to_pairs(dataset, mode="adjacent").to_list() == [
        {"chosen": "best", "rejected": "mid", "prompt": "Q"},
        {"chosen": "mid", "rejected": "worst", "prompt": "Q"},
    ]


def test_ranked_with_ranks_column_and_ties(caplog):
    dataset = Dataset.from_dict(
        {"prompt": ["Q", "R"], "completions": [["c", "a", "b", "d"], ["x", "y"]], "ranks": [[2, 1, 2, 3], [1, 1]]}
    )
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        adjacent = ranked_to_pairs(dataset, mode="adjacent")
    assert [(r["chosen"], r["rejected"]) for r in adjacent] == [("a", "c"), ("a", "b"), ("c", "d"), ("b", "d")]
    assert "1 x column 'ranks': expected at least two different ranks (row 1)" in caplog.text
    every = ranked_to_pairs(dataset, mode="all", ranks_column="ranks")
    assert [(r["chosen"], r["rejected"]) for r in every] == [
        ("a", "c"),
        ("a", "b"),
        ("a", "d"),
        ("c", "d"),
        ("b", "d"),
    ]


# image pairs


def pick_a_pic():
    red, green, blue, white, black, grey = (png_bytes(c) for c in ("red", "green", "blue", "white", "black", "grey"))
    return Dataset.from_dict(
        {
            "caption": ["a red ball", "a blue sky", "a tie"],
            "jpg_0": [red, green, black],
            "jpg_1": [white, blue, grey],
            "label_0": [1.0, 0.0, 0.5],
            "label_1": [0.0, 1.0, 0.5],
            "user_id": [1, 2, 3],
        }
    )


def test_pick_a_pic_is_oriented_and_ties_dropped(caplog):
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        out = validate_image_pair_dataset(pick_a_pic())
    assert out.column_names == ["caption", "user_id", "chosen", "rejected"]
    assert out.features["chosen"] == out.features["rejected"] == Image()
    assert [(r["caption"], pixel(r["chosen"]), pixel(r["rejected"]), r["user_id"]) for r in out] == [
        ("a red ball", (255, 0, 0), (255, 255, 255), 1),
        ("a blue sky", (0, 0, 255), (0, 128, 0), 2),
    ]
    assert "validate_image_pair_dataset: dropped 1 of 3 rows." in caplog.text
    assert "1 x column 'label_0': expected a preference, not a tie (ties='drop') (row 2)" in caplog.text

    streamed = list(validate_image_pair_dataset(pick_a_pic().to_iterable_dataset()))
    assert [(r["caption"], r["user_id"]) for r in streamed] == [("a red ball", 1), ("a blue sky", 2)]
    assert [(pixel(r["chosen"]), pixel(r["rejected"])) for r in streamed] == [
        ((255, 0, 0), (255, 255, 255)),
        ((0, 0, 255), (0, 128, 0)),
    ]


def test_image_columns_with_paths_and_explicit_chosen_rejected(image_files):
    dataset = Dataset.from_dict(
        {"caption": ["c"], "image_0": [png_bytes("red")], "image_1": [image_files["good"]], "label_0": [0]}
    )
    row = image_pairs_to_preference(dataset)[0]
    assert (pixel(row["chosen"]), pixel(row["rejected"])) == ((0, 0, 255), (255, 0, 0))

    explicit = Dataset.from_dict({"caption": ["c"], "chosen": [png_bytes("red")], "rejected": [png_bytes("blue")]})
    for out in (validate_image_pair_dataset(explicit), validate_image_pair_dataset(explicit.to_iterable_dataset())):
        (row,) = out
        assert (row["caption"], pixel(row["chosen"]), pixel(row["rejected"])) == ("c", (255, 0, 0), (0, 0, 255))


def test_size_mismatch_is_allowed_by_default_and_an_error_on_request():
    dataset = Dataset.from_dict(
        {"caption": ["c"], "chosen": [png_bytes(size=(4, 4))], "rejected": [png_bytes("blue", size=(8, 6))]}
    )
    assert len(validate_image_pair_dataset(dataset)) == 1
    with pytest.raises(PreferenceDataError) as info:
        validate_image_pair_dataset(dataset, allow_size_mismatch=False)
    assert (info.value.row, info.value.column) == (0, "rejected")
    assert "4x4 (chosen) and 8x6 (rejected)" in str(info.value)


def test_image_pairs_to_preference_does_not_decode():
    dataset = Dataset.from_dict({"caption": ["c"], "jpg_0": [b"not a png"], "jpg_1": [png_bytes()], "label_0": [1]})
    assert len(image_pairs_to_preference(dataset)) == 1
    with pytest.raises(PreferenceDataError, match="expected a readable image"):
        validate_image_pair_dataset(dataset)


# bad input


def _bad_cases(files):
    """case -> (function, columns, kwargs, row, column, expected text). One line per case, so the table stays a table."""
    ok = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    conv = {"prompt": [user("Q")], "chosen": [assistant("A")], "rejected": [assistant("B")]}
    placeholder = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]
    pair = {"caption": "c", "jpg_0": png_bytes("red"), "jpg_1": png_bytes("blue"), "label_0": 1.0}
    pref, prompts, pairs = validate_preference_dataset, validate_prompt_dataset, validate_image_pair_dataset
    roles = "('system', 'user', 'assistant', 'tool')"
    # fmt: off
    return {
        "missing column": (pref, {"chosen": ["A"]}, {}, None, "rejected", "a column named 'rejected', got only ['chosen']"),
        "None completion": (pref, {**_cols(ok, 2), "chosen": ["A", None]}, {}, 1, "chosen", "a non-empty string, got None"),
        "empty completion": (pref, {**_cols(ok, 2), "rejected": ["B", ""]}, {}, 1, "rejected", "a non-empty string, got '' (empty)"),
        "blank completion": (pref, {**_cols(ok, 1), "chosen": ["  "]}, {}, 0, "chosen", "a non-empty string, got '  ' (blank)"),
        "non-string completion": (pref, {**_cols(ok, 1), "chosen": [42]}, {}, 0, "chosen", "a non-empty string or a list of messages, got 42 (int)"),
        "chosen identical to rejected": (pref, {**_cols(ok, 2), "rejected": ["B", "A"]}, {}, 1, "rejected", "a completion different from 'chosen', got the same completion as 'chosen'"),
        "message not a dict": (pref, {**_cols(conv, 1), "chosen": [["Hello"]]}, {}, 0, "chosen", "each message to be a dict with 'role' and 'content', got 'Hello' in message 0"),
        "unknown role": (pref, {**_cols(conv, 1), "prompt": [[{"role": "bot", "content": "Q"}]]}, {}, 0, "prompt", f"a message role in {roles}, got role 'bot' in message 0"),
        "empty message content": (pref, {**_cols(conv, 1), "rejected": [[assistant("")]]}, {}, 0, "rejected", "non-empty message content, got '' (empty) in message 0"),
        "empty conversation": (pref, {**_cols(conv, 1), "chosen": [[]]}, {}, 0, "chosen", "a non-empty list of messages, got [] (empty list)"),
        "mixed formats": (pref, {**_cols(ok, 1), "rejected": [[assistant("B")]]}, {}, 0, "rejected", "the same format as 'chosen' (a string)"),
        "implicit prompt, no shared prefix": (pref, {"chosen": ["Yes"], "rejected": ["No"]}, {}, 0, "prompt", "a prompt shared by 'chosen' and 'rejected', got no common prefix"),
        "implicit prompt, prefix completion": (pref, {"chosen": ["The sky"], "rejected": ["The sky is"]}, {}, 0, "chosen", "a completion that is not a prefix of the other one (the prompt is implicit), got 'The sky', a prefix of 'The sky is'"),
        "images missing": (pref, {**_cols(ok, 2), "images": [[png_bytes()], None]}, {}, 1, "images", "a list of images, got None"),
        "image is None": (pref, {**_cols(ok, 1), "image": [None]}, {}, 0, "image", "an image, got None (missing)"),
        "image path does not exist": (pref, {**_cols(ok, 1), "images": [[files["good"], files["missing"]]]}, {}, 0, "images", f"an existing image file, got {files['missing']!r} (file not found) at image 1"),
        "truncated image file": (pref, {**_cols(ok, 1), "images": [[files["truncated"]]]}, {}, 0, "images", f"a readable image, got {files['truncated']!r} (image file is truncated"),
        "file that is not an image": (pref, {**_cols(ok, 1), "images": [[files["not_image"]]]}, {}, 0, "images", f"a readable image, got {files['not_image']!r} (PIL cannot identify the image format) at image 0"),
        "bytes PIL cannot open": (pref, {**_cols(ok, 1), "image": [b"\x89PNG garbage"]}, {}, 0, "image", "a readable image, got 12 bytes (PIL cannot identify the image format)"),
        "wrong image type": (pref, {**_cols(ok, 1), "images": [[3]]}, {}, 0, "images", "an image (a PIL image, a file path or encoded bytes), got 3 (int) at image 0"),
        "images vs placeholders": (pref, {**_cols(conv, 1), "prompt": [placeholder], "images": [[png_bytes(), png_bytes()]]}, {}, 0, "images", "as many images as image placeholders in the prompt, got Number of images provided (2) does not match number of image placeholders (1)."),
        "placeholder in a completion": (pref, {**_cols(conv, 1), "prompt": [placeholder], "chosen": [[{"role": "assistant", "content": [{"type": "image"}]}]], "images": [[png_bytes()]]}, {}, 0, "chosen", "no image placeholders in a completion"),
        "images required, no column": (pref, _cols(ok, 1), {"images": "required"}, None, "images", "an 'images' (list) or 'image' column (images='required')"),
        "images required, empty list": (pref, {**_cols(ok, 1), "images": [[]]}, {"images": "required"}, 0, "images", "at least one image (images='required'), got [] (empty list)"),
        "both image and images": (pref, {**_cols(ok, 1), "image": [png_bytes()], "images": [[png_bytes()]]}, {}, None, "image", "either an 'images' (list) or an 'image' column, got both"),
        "empty prompt": (prompts, {"prompt": ["Q", ""]}, {}, 1, "prompt", "a non-empty string, got '' (empty)"),
        "prompt column missing": (prompts, {"question": ["Q"]}, {}, None, "prompt", "a column named 'prompt', got only ['question']"),
        "tie with ties='raise'": (pairs, {**_cols(pair, 2), "label_0": [1.0, 0.5]}, {"ties": "raise"}, 1, "label_0", "a preference (label_0 of 0 or 1), not a tie (ties='raise'), got label_0 = 0.5"),
        "label out of range": (pairs, {**_cols(pair, 1), "label_0": [0.3]}, {}, 0, "label_0", "a label in (0, 0.5, 1), got 0.3 (float)"),
        "label_1 disagrees": (pairs, {**_cols(pair, 1), "label_1": [1.0]}, {}, 0, "label_1", "label_1 = 1 - label_0, got label_0 = 1.0, label_1 = 1.0 (float)"),
        "same image twice": (pairs, {**_cols(pair, 1), "jpg_1": [png_bytes("red")]}, {}, 0, "jpg_1", "an image different from 'jpg_0', got the same image twice"),
        "unreadable pair image": (pairs, {**_cols(pair, 1), "jpg_0": [b"junk"]}, {}, 0, "jpg_0", "a readable image, got 4 bytes (PIL cannot identify the image format)"),
        "empty caption": (pairs, {**_cols(pair, 1), "caption": [""]}, {}, 0, "caption", "a non-empty string, got '' (empty)"),
        "no label column": (pairs, {"caption": ["c"], "jpg_0": [b"a"], "jpg_1": [b"b"]}, {}, None, "label_0", "a 'label_0' column (1: jpg_0 preferred, 0: jpg_1 preferred, 0.5: tie)"),
        "scores length": (scored_to_pairs, {"prompt": ["Q"], "completions": [["a", "b"]], "scores": [[1.0]]}, {}, 0, "scores", "one score per completion, got 1 scores for 2 completions"),
        "NaN score": (scored_to_pairs, {"prompt": ["Q"], "completions": [["a", "b"]], "scores": [[1.0, math.nan]]}, {}, 0, "scores", "a number, got nan (float) at score 1"),
        "one completion": (scored_to_pairs, {"prompt": ["Q"], "completions": [["a"]], "scores": [[1.0]]}, {}, 0, "completions", "a list of at least 2 completions, got ['a'] (list)"),
        "empty scored completion": (scored_to_pairs, {"prompt": ["Q"], "completions": [["a", ""]], "scores": [[1.0, 2.0]]}, {}, 0, "completions", "a non-empty string, got '' (empty) at completion 1"),
        "ranks length": (ranked_to_pairs, {"prompt": ["Q"], "completions": [["a", "b"]], "ranks": [[1, 2, 3]]}, {}, 0, "ranks", "one rank per completion, got 3 ranks for 2 completions"),
    }
    # fmt: on


def _cols(row, n):
    return {key: [value] * n for key, value in row.items()}


BAD_CASE_IDS = list(_bad_cases({"good": "", "truncated": "", "not_image": "", "missing": ""}))


@pytest.mark.parametrize("case", BAD_CASE_IDS)
def test_bad_input_names_row_column_and_expectation(case, image_files):
    function, columns, kwargs, row, column, expected = _bad_cases(image_files)[case]
    with pytest.raises(PreferenceDataError) as info:
        function(Dataset.from_dict(columns), **kwargs)
    err = info.value
    assert (err.row, err.column) == (row, column)
    assert f"expected {expected}" in str(err)
    prefix = f"Row {row}, column {column!r}: " if row is not None else f"Column {column!r}: "
    assert str(err).startswith(prefix)
    if row is not None:
        assert 'on_invalid="drop"' in str(err)


def test_drop_mode_counts_reasons_and_lists_rows(caplog, image_files):
    dataset = Dataset.from_dict(
        {
            "prompt": ["Q0", "Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8", "Q9"],
            "chosen": ["A", "", "A", "", "same", "A", "", "", "", ""],
            "rejected": ["B", "B", "B", "B", "same", "B", "B", "B", "B", "B"],
            "images": [[image_files["good"]]] * 2 + [[image_files["missing"]]] + [[image_files["good"]]] * 7,
        }
    )
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        out = validate_preference_dataset(dataset, on_invalid="drop")
    assert out["prompt"] == ["Q0", "Q5"]
    assert out.features["images"].feature == Image()
    report = caplog.records[-1].getMessage()
    assert report.splitlines() == [
        "validate_preference_dataset: dropped 8 of 10 rows.",
        "  6 x column 'chosen': expected a non-empty string (rows 1, 3, 6, 7, 8, ... (1 more))",
        "  1 x column 'images': expected an existing image file (row 2)",
        "  1 x column 'rejected': expected a completion different from 'chosen' (row 4)",
    ]


def test_drop_mode_with_implicit_prompt_keeps_the_right_rows(caplog):
    dataset = Dataset.from_dict(
        {"chosen": ["Q: a", "Q:", "Q: c"], "rejected": ["Q: b", "Q: x", "Q: d"], "n": [0, 1, 2]}
    )
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        out = validate_preference_dataset(dataset, on_invalid="drop")
    assert out.to_list() == [
        {"prompt": "Q:", "chosen": " a", "rejected": " b", "n": 0},
        {"prompt": "Q:", "chosen": " c", "rejected": " d", "n": 2},
    ]
    assert (
        "1 x column 'chosen': expected a completion that is not a prefix of the other one (the prompt is implicit) (row 1)"
        in caplog.text
    )


def test_drop_mode_in_conversions(caplog):
    scored = Dataset.from_dict(
        {
            "prompt": ["Q", "R", "S"],
            "completions": [["a", "b"], ["c", "d"], ["e", "f"]],
            "scores": [[1, 2], [1], [3, 3]],
        }
    )
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        out = scored_to_pairs(scored, on_invalid="drop")
    assert out.to_list() == [{"chosen": "b", "rejected": "a", "score_chosen": 2, "score_rejected": 1, "prompt": "Q"}]
    assert "scored_to_pairs: dropped 2 of 3 rows." in caplog.text
    assert "1 x column 'scores': expected one score per completion (row 1)" in caplog.text
    assert "1 x column 'scores': expected at least two different scores (row 2)" in caplog.text

    pairs = Dataset.from_dict(
        {
            "caption": ["a", "b", "c"],
            "jpg_0": [png_bytes(), None, png_bytes()],
            "jpg_1": [png_bytes("blue")] * 3,
            "label_0": [1, 1, 0.5],
        }
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trl_extras.data"):
        out = image_pairs_to_preference(pairs, on_invalid="drop")
    assert out["caption"] == ["a"]
    assert "1 x column 'jpg_0': expected an image (row 1)" in caplog.text
    assert "1 x column 'label_0': expected a preference, not a tie (ties='drop') (row 2)" in caplog.text


def test_no_valid_row_left_or_no_row_at_all_is_an_error(caplog):
    with pytest.raises(
        PreferenceDataError, match="Dataset: expected at least one valid row, got all 2 rows were dropped"
    ):
        validate_preference_dataset(Dataset.from_dict({"chosen": ["", ""], "rejected": ["a", "b"]}), on_invalid="drop")
    assert "dropped 2 of 2 rows" in caplog.text
    with pytest.raises(PreferenceDataError, match="Dataset: expected a dataset with at least one row, got 0 rows"):
        validate_preference_dataset(Dataset.from_dict({"chosen": [], "rejected": []}))


def test_bad_options_name_the_argument():
    dataset = Dataset.from_dict({"chosen": ["a"], "rejected": ["b"]})
    with pytest.raises(ValueError, match="on_invalid must be one of 'raise', 'drop', got 'skip'"):
        validate_preference_dataset(dataset, on_invalid="skip")
    with pytest.raises(ValueError, match="strategy must be one of"):
        scored_to_pairs(dataset, strategy="best_vs_best")
    with pytest.raises(TypeError, match="expects a datasets.Dataset or IterableDataset, got list"):
        validate_preference_dataset([{"chosen": "a", "rejected": "b"}])
