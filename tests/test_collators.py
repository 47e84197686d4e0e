"""Tests for ``trl_extras.collators``: exact tensors on hand-written rows, and stock ``DPOTrainer`` runs."""

import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference, DataCollatorForVisionPreference

from trl_extras.collators import (
    PreferenceCollator,
    VisionPreferenceCollator,
    pad_sequences,
    truncate,
    truncate_preference_pair,
)
from trl_extras.data.errors import PreferenceDataError
from trl_extras.testing import build_tiny_vlm
from trl_extras.testing._vlm import load_tiny_vlm_processor

T = torch.tensor

# Two hand-written pairs (the example of TRL's DataCollatorForPreference docstring)
EXAMPLES = [
    {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
    {"prompt_ids": [7, 8], "chosen_ids": [9], "rejected_ids": [10, 11]},
]


def _assert_batch(batch, **expected):
    assert sorted(batch) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(batch[key], T(value)), f"{key}:\n{batch[key]}\n!=\n{T(value)}"


# --------------------------------------------------------------------------------------------------------- utils


def test_pad_sequences_both_sides_and_multiple():
    assert torch.equal(pad_sequences([[1, 2, 3], [4]], padding_value=9), T([[1, 2, 3], [4, 9, 9]]))
    assert torch.equal(pad_sequences([[1, 2, 3], [4]], 9, "left"), T([[1, 2, 3], [9, 9, 4]]))
    assert torch.equal(pad_sequences([[1, 2, 3], [4]], 0, "left", 4), T([[0, 1, 2, 3], [0, 0, 0, 4]]))
    assert torch.equal(pad_sequences([[1, 2, 3, 4], [5]], 0, "right", 4), T([[1, 2, 3, 4], [5, 0, 0, 0]]))
    assert pad_sequences([[1], []]).dtype == torch.long
    floats = pad_sequences([T([0.5, 1.5]), T([2.5])], padding_value=-1.0)
    assert floats.dtype == torch.float32 and torch.equal(floats, T([[0.5, 1.5], [2.5, -1.0]]))
    with pytest.raises(ValueError, match="`padding_side`"):
        pad_sequences([[1]], padding_side="middle")
    with pytest.raises(ValueError, match="`pad_to_multiple_of`"):
        pad_sequences([[1]], pad_to_multiple_of=0)


def test_truncate_keeps_start_or_end():
    assert truncate([1, 2, 3, 4], 2) == [1, 2]
    assert truncate([1, 2, 3, 4], 2, "keep_end") == [3, 4]
    assert truncate([1, 2], 5, "keep_end") == [1, 2]
    assert truncate([1, 2], None) == [1, 2]
    assert torch.equal(truncate(T([1, 2, 3]), 1, "keep_end"), T([3]))
    with pytest.raises(ValueError, match="`truncation_mode`"):
        truncate([1], 1, "keep_middle")


def test_truncate_preference_pair_modes_and_limits():
    prompt, chosen, rejected = [1, 2, 3, 4], [5, 6, 7], [8]
    # keep_start: the completions lose their ends, the prompt is whole
    assert truncate_preference_pair(prompt, chosen, rejected, max_length=5) == ([1, 2, 3, 4], [5], [8])
    # keep_end: the prompt loses its start, by what the longer completion needs, and the completions are whole
    assert truncate_preference_pair(prompt, chosen, rejected, max_length=5, truncation_mode="keep_end") == (
        [3, 4],
        [5, 6, 7],
        [8],
    )
    # max_prompt_length keeps the end of the prompt, max_completion_length the start of each completion
    assert truncate_preference_pair(prompt, chosen, rejected, max_prompt_length=2, max_completion_length=2) == (
        [3, 4],
        [5, 6],
        [8],
    )
    # they apply before max_length: 1 prompt token + 2 completion tokens fit in 4, nothing more is cut
    assert truncate_preference_pair(
        prompt,
        chosen,
        rejected,
        max_length=4,
        truncation_mode="keep_end",
        max_prompt_length=1,
        max_completion_length=2,
    ) == ([4], [5, 6], [8])
    assert truncate_preference_pair(prompt, chosen, rejected) == (prompt, chosen, rejected)


def test_truncate_preference_pair_errors_name_the_row():
    with pytest.raises(PreferenceDataError, match="Row 3, column 'prompt'.*no completion token") as info:
        truncate_preference_pair([1, 2, 3], [4], [5], max_length=3, row=3)
    assert (info.value.row, info.value.column) == (3, "prompt")
    with pytest.raises(PreferenceDataError, match="Row 0, column 'rejected'.*never cuts the completion"):
        truncate_preference_pair([1], [2], [3, 4, 5], max_length=3, truncation_mode="keep_end", row=0)
    # A protected span (image tokens at prompt positions 1..2) may not be cut
    kwargs = dict(truncation_mode="keep_end", protected_span=(1, 3), row=2)
    assert truncate_preference_pair([1, 2, 3, 4], [5], [6], max_length=4, **kwargs) == ([2, 3, 4], [5], [6])
    with pytest.raises(PreferenceDataError, match="Row 2, column 'prompt'.*image tokens"):
        truncate_preference_pair([1, 2, 3, 4], [5], [6], max_length=3, **kwargs)
    with pytest.raises(PreferenceDataError, match="image tokens"):
        truncate_preference_pair([1, 2, 3, 4], [5], [6], max_prompt_length=2, **kwargs)
    with pytest.raises(PreferenceDataError, match="image tokens fit in max_length=2"):
        truncate_preference_pair([1, 2, 3, 4], [5], [6], max_length=2, protected_span=(1, 3))


# ---------------------------------------------------------------------------------------------- PreferenceCollator


def test_preference_collator_matches_trl_layout():
    batch = PreferenceCollator(pad_token_id=0)(EXAMPLES)
    _assert_batch(
        batch,
        input_ids=[[1, 2, 3, 4, 5], [7, 8, 9, 0, 0], [1, 2, 3, 6, 0], [7, 8, 10, 11, 0]],
        attention_mask=[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]],
        completion_mask=[[0, 0, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 1, 0]],
    )
    reference = DataCollatorForPreference(pad_token_id=0)(EXAMPLES)
    assert all(torch.equal(batch[key], reference[key]) for key in reference)


def test_preference_collator_left_padding_and_multiple():
    batch = PreferenceCollator(pad_token_id=0, padding_side="left", pad_to_multiple_of=4)(EXAMPLES)
    _assert_batch(
        batch,
        input_ids=[
            [0, 0, 0, 1, 2, 3, 4, 5],
            [0, 0, 0, 0, 0, 7, 8, 9],
            [0, 0, 0, 0, 1, 2, 3, 6],
            [0, 0, 0, 0, 7, 8, 10, 11],
        ],
        attention_mask=[
            [0, 0, 0, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ],
        completion_mask=[
            [0, 0, 0, 0, 0, 0, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0, 0, 1, 1],
        ],
    )
    right = PreferenceCollator(pad_token_id=99, pad_to_multiple_of=4)(EXAMPLES)
    assert right["input_ids"].tolist() == [[1, 2, 3, 4, 5, 99, 99, 99], [7, 8, 9, 99, 99, 99, 99, 99],
                                           [1, 2, 3, 6, 99, 99, 99, 99], [7, 8, 10, 11, 99, 99, 99, 99]]  # fmt: skip
    # Already a multiple: no extra padding
    assert PreferenceCollator(pad_token_id=0, pad_to_multiple_of=5)(EXAMPLES)["input_ids"].shape == (4, 5)


def test_preference_collator_keep_start_matches_trl():
    batch = PreferenceCollator(pad_token_id=0, max_length=4)(EXAMPLES)
    _assert_batch(
        batch,
        input_ids=[[1, 2, 3, 4], [7, 8, 9, 0], [1, 2, 3, 6], [7, 8, 10, 11]],
        attention_mask=[[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]],
        completion_mask=[[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 1]],
    )
    reference = DataCollatorForPreference(pad_token_id=0, max_length=4)(EXAMPLES)
    assert all(torch.equal(batch[key], reference[key]) for key in reference)


def test_preference_collator_keep_end_cuts_the_prompt_once_per_pair():
    batch = PreferenceCollator(pad_token_id=0, max_length=4, truncation_mode="keep_end")(EXAMPLES)
    # Row 0: the longer completion (chosen, 2 tokens) leaves 2 prompt tokens, [2, 3], for chosen AND rejected
    _assert_batch(
        batch,
        input_ids=[[2, 3, 4, 5], [7, 8, 9, 0], [2, 3, 6, 0], [7, 8, 10, 11]],
        attention_mask=[[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
        completion_mask=[[0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]],
    )
    # TRL cuts each sequence on its own: rejected row 0 keeps prompt [1, 2, 3], chosen row 0 only [2, 3]
    trl = DataCollatorForPreference(pad_token_id=0, max_length=4, truncation_mode="keep_end")(EXAMPLES)
    assert trl["input_ids"][2].tolist() == [1, 2, 3, 6]


def test_preference_collator_keep_end_never_cuts_the_completion():
    long = [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5, 6, 7]}]
    with pytest.raises(PreferenceDataError, match="Row 0, column 'rejected'"):
        PreferenceCollator(pad_token_id=0, max_length=4, truncation_mode="keep_end")(long)
    # TRL would keep [4, 5, 6, 7]: the completion's end without any prompt. With max_completion_length it fits:
    collator = PreferenceCollator(pad_token_id=0, max_length=4, truncation_mode="keep_end", max_completion_length=3)
    assert collator(long)["input_ids"].tolist() == [[2, 3, 0, 0], [2, 4, 5, 6]]


def test_preference_collator_keep_start_refuses_rows_left_without_completion():
    with pytest.raises(PreferenceDataError, match="Row 0, column 'prompt'.*no completion token"):
        PreferenceCollator(pad_token_id=0, max_length=3)(EXAMPLES)
    # with max_prompt_length the prompt is cut first and the row fits
    batch = PreferenceCollator(pad_token_id=0, max_length=3, max_prompt_length=1)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[3, 4, 5], [8, 9, 0], [3, 6, 0], [8, 10, 11]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1], [0, 1, 0], [0, 1, 0], [0, 1, 1]]


def test_preference_collator_passes_reference_logps():
    rows = [
        {**example, "ref_chosen_logps": -1.5 - i, "ref_rejected_logps": -2.5 - i} for i, example in enumerate(EXAMPLES)
    ]
    batch = PreferenceCollator(pad_token_id=0)(rows)
    assert torch.equal(batch["ref_chosen_logps"], T([-1.5, -2.5]))
    assert torch.equal(batch["ref_rejected_logps"], T([-2.5, -3.5]))


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt_ids": [1], "chosen_ids": [2]}, "Row 1, column 'rejected_ids'.*no such key"),
        ({"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [3]}, "Row 1, column 'chosen_ids'.*at least one"),
        ({"prompt_ids": "hello", "chosen_ids": [2], "rejected_ids": [3]}, "Row 1, column 'prompt_ids'.*token ids"),
        ({"prompt_ids": [1], "chosen_ids": [2.0], "rejected_ids": [3]}, "Row 1, column 'chosen_ids'.*token ids"),
    ],
)
def test_preference_collator_bad_rows_name_row_and_column(row, match):
    with pytest.raises(PreferenceDataError, match=match):
        PreferenceCollator(pad_token_id=0)([EXAMPLES[0], row])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(truncation_mode="keep_middle"), "truncation_mode"),
        (dict(padding_side="center"), "padding_side"),
        (dict(pad_to_multiple_of=0), "pad_to_multiple_of"),
        (dict(max_length=-1), "max_length"),
        (dict(max_prompt_length=1.5), "max_prompt_length"),
        (dict(return_tensors="np"), "return_tensors"),
        (dict(pad_token_id=None), "pad_token_id"),
    ],
)
def test_preference_collator_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        PreferenceCollator(**{"pad_token_id": 0, **kwargs})


def test_preference_collator_from_trainer_args():
    args = DPOConfig(output_dir="unused", max_length=7, pad_to_multiple_of=8, bf16=False, report_to="none")
    collator = PreferenceCollator.from_trainer_args(args, pad_token_id=3, padding_side="left")
    assert (collator.max_length, collator.truncation_mode, collator.pad_to_multiple_of) == (7, "keep_start", 8)
    assert (collator.pad_token_id, collator.padding_side) == (3, "left")


# ----------------------------------------------------------------------------------- PreferenceCollator + trainers

TEXT_PAIRS = {
    "prompt": ["The movie was", "I think it was", "The quick brown", "What is the capital"],
    "chosen": [" great.", " wonderful and fun.", " fox jumps.", " of France? Paris."],
    "rejected": [" terrible and boring.", " bad.", " dog sleeps over it.", " of France? Rome."],
}


def _dpo_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return DPOConfig(**{**defaults, **kwargs})


def _train_text(tiny_lm_path, tmp_path, collator, trainer_class=DPOTrainer, args=None):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = trainer_class(
        model=model,
        args=args or _dpo_args(tmp_path),
        train_dataset=Dataset.from_dict(TEXT_PAIRS),
        processing_class=tokenizer,
        data_collator=collator(tokenizer) if collator else None,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    return logs, changed


def test_stock_dpo_trainer_with_preference_collator(tiny_lm_path, tmp_path):
    logs, changed = _train_text(tiny_lm_path, tmp_path, lambda tok: PreferenceCollator(tok.pad_token_id))
    assert len(logs) == 2 and all(torch.isfinite(T(log["loss"])) for log in logs)
    assert logs[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference before the first update
    assert logs[1]["rewards/margins"] > 0  # the update moved the policy towards the chosen completions
    assert changed
    # Same numbers as TRL's own collator, and as left padding on this rotary-position model
    reference, _ = _train_text(tiny_lm_path, tmp_path, None)
    left, _ = _train_text(
        tiny_lm_path,
        tmp_path,
        lambda tok: PreferenceCollator(tok.pad_token_id, padding_side="left", pad_to_multiple_of=8),
    )
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert [log[key] for log in logs] == pytest.approx([log[key] for log in reference], rel=1e-5, abs=1e-6)
        assert [log[key] for log in left] == pytest.approx([log[key] for log in reference], rel=1e-4, abs=1e-5)


def test_stock_dpo_trainer_with_truncating_collator(tiny_lm_path, tmp_path):
    # Prompts have 3-12 tokens and completions 5-17: pairs 1 and 2 lose the start of their prompt
    seen = []

    def collator(tokenizer):
        inner = PreferenceCollator(tokenizer.pad_token_id, max_length=20, truncation_mode="keep_end")

        def collate(examples):
            seen.append(inner(examples))
            return seen[-1]

        return collate

    logs, changed = _train_text(tiny_lm_path, tmp_path, collator, args=_dpo_args(tmp_path, max_length=None))
    assert seen[0]["attention_mask"].sum(dim=1).max() == 20
    assert len(logs) == 2 and all(torch.isfinite(T(log["loss"])) for log in logs) and changed


def test_unlikelihood_trainer_with_preference_collator(tiny_lm_path, tmp_path):
    from trl_extras.trainer.unlikelihood_config import UnlikelihoodConfig
    from trl_extras.trainer.unlikelihood_trainer import UnlikelihoodTrainer

    args = UnlikelihoodConfig(**_dpo_args(tmp_path).to_dict() | {"output_dir": str(tmp_path)})
    collator = lambda tok: PreferenceCollator(tok.pad_token_id, padding_side="left", max_length=16)  # noqa: E731
    logs, changed = _train_text(tiny_lm_path, tmp_path, collator, trainer_class=UnlikelihoodTrainer, args=args)
    assert len(logs) == 2 and all(torch.isfinite(T(log["loss"])) for log in logs) and changed
    assert logs[1]["loss"] < logs[0]["loss"]


# ---------------------------------------------------------------------------------------- VisionPreferenceCollator


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def vlm(request, tmp_path_factory):
    family = request.param
    return family, build_tiny_vlm(tmp_path_factory.mktemp(f"vlm-{family}"), family=family)


def _vision_rows(image_column="images", system=None):
    rows = [
        ("red", (56, 56), "What is it?", "A red square.", "A dog."),
        ("blue", (40, 30), "Colour?", "Blue.", "It is a green thing."),
    ]
    out = []
    for color, size, question, chosen, rejected in rows:
        image = Image.new("RGB", size, color)
        prompt = [{"role": "user", "content": question}]
        if system:
            prompt = [{"role": "system", "content": system}, *prompt]
        out.append(
            {
                image_column: [image] if image_column == "images" else image,
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return out


@pytest.mark.parametrize("image_column", ["images", "image"])
def test_vision_collator_matches_trl_layout(vlm, image_column):
    family, path = vlm
    processor = load_tiny_vlm_processor(path)
    rows = _vision_rows(image_column)
    batch = VisionPreferenceCollator(processor)(rows)
    reference = DataCollatorForVisionPreference(processor)(_vision_rows(image_column))
    assert all(image_column in row and "prompt" in row for row in rows)  # the dataset's rows are not mutated
    extra = {"llava": set(), "qwen2_vl": {"image_grid_thw", "mm_token_type_ids"}}[family]
    assert set(batch) == set(reference) == {"input_ids", "attention_mask", "completion_mask", "pixel_values"} | extra
    real = reference["attention_mask"].bool()
    for key in reference:
        assert batch[key].shape == reference[key].shape, key
        if key == "input_ids":  # TRL pads completions with eos when pad_token_id == 0 (`0 or eos`); we use pad
            assert torch.equal(batch[key][real], reference[key][real])
            assert (batch[key][~real] == processor.tokenizer.pad_token_id).all()
        else:
            assert torch.equal(batch[key], reference[key]), key
    # The chosen and rejected halves carry the same images, each with all its image tokens
    image_id = processor.image_token_id
    n_tokens = (batch["input_ids"] == image_id).sum(dim=1)
    assert torch.equal(n_tokens[:2], n_tokens[2:])
    if family == "llava":
        assert n_tokens.tolist() == [16, 16, 16, 16]
        assert torch.equal(batch["pixel_values"][:2], batch["pixel_values"][2:])
    else:
        grid = batch["image_grid_thw"]
        assert grid[:, 0].tolist() == [1, 1, 1, 1] and grid[0].tolist() == [1, 4, 4]
        assert n_tokens.tolist() == (grid.prod(dim=1) // 4).tolist()
        assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_id)


def test_vision_collator_left_padding_and_multiple(vlm):
    _, path = vlm
    processor = load_tiny_vlm_processor(path)
    right = VisionPreferenceCollator(processor)(_vision_rows())
    left = VisionPreferenceCollator(processor, padding_side="left", pad_to_multiple_of=16)(_vision_rows())
    length = right["input_ids"].shape[1]
    padded = -(-length // 16) * 16
    assert left["input_ids"].shape == (4, padded)
    for key in ("input_ids", "attention_mask", "completion_mask", "mm_token_type_ids"):
        if key not in right:
            continue
        for i in range(4):
            n = int(right["attention_mask"][i].sum())
            assert torch.equal(left[key][i, padded - n :], right[key][i, :n]), key  # same tokens, end-aligned
            assert (left["attention_mask"][i, : padded - n] == 0).all()
    assert torch.equal(left["pixel_values"], right["pixel_values"])
    with pytest.raises(NotImplementedError):  # what TRL's collator does with pad_to_multiple_of
        DataCollatorForVisionPreference(processor, pad_to_multiple_of=16)(_vision_rows())


def _completion_logps(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1]
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)


def test_vision_collator_padding_side_does_not_change_log_probs(vlm):
    _, path = vlm
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = load_tiny_vlm_processor(path)
    right = _completion_logps(model, VisionPreferenceCollator(processor)(_vision_rows()))
    left = _completion_logps(model, VisionPreferenceCollator(processor, padding_side="left")(_vision_rows()))
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-4)
    assert right.shape == (4,) and (right < 0).all()


SYSTEM = "Answer briefly and truthfully."


def test_vision_collator_keep_end_cuts_text_before_the_image_only(vlm):
    family, path = vlm
    processor = load_tiny_vlm_processor(path)
    full = VisionPreferenceCollator(processor)(_vision_rows(system=SYSTEM))
    # Where the first image (with its delimiters) starts in row 0
    ids = full["input_ids"][0].tolist()
    first_image = ids.index(processor.image_token_id)
    if family == "qwen2_vl":
        assert ids[first_image - 1] == processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        first_image -= 1
    lengths = full["attention_mask"].sum(dim=1)
    longest_pair0 = int(max(lengths[0], lengths[2]))

    # Cut exactly the text before the image in pair 0: allowed, the batch is the untruncated one shifted left
    max_length = longest_pair0 - first_image
    rows = _vision_rows(system=SYSTEM)[:1]
    batch = VisionPreferenceCollator(processor, max_length=max_length, truncation_mode="keep_end")(rows)
    untruncated = VisionPreferenceCollator(processor)(_vision_rows(system=SYSTEM)[:1])
    for i in range(2):
        n = int(untruncated["attention_mask"][i].sum())
        assert batch["input_ids"][i, : n - first_image].tolist() == untruncated["input_ids"][i, first_image:n].tolist()
        assert batch["completion_mask"][i].sum() == untruncated["completion_mask"][i].sum()  # completion whole
    assert batch["input_ids"].shape[1] == max_length
    assert torch.equal(batch["pixel_values"], untruncated["pixel_values"])
    # ... and the model accepts it: every image feature finds its token
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "completion_mask"}).logits).all()

    # One token more would cut the image (for Qwen2-VL: its <|vision_start|>): refused, naming the row
    with pytest.raises(PreferenceDataError, match="Row 0, column 'prompt'.*image tokens"):
        VisionPreferenceCollator(processor, max_length=max_length - 1, truncation_mode="keep_end")(rows)


def test_vision_collator_refuses_cutting_images_with_keep_start(vlm):
    _, path = vlm
    processor = load_tiny_vlm_processor(path)

    def rows():  # row 1 has a long system prompt before its image
        rows = _vision_rows()
        rows[1]["prompt"] = [{"role": "system", "content": SYSTEM * 2}, *rows[1]["prompt"]]
        return rows

    full = VisionPreferenceCollator(processor)(rows())
    prompt_lengths = (full["attention_mask"] - full["completion_mask"]).sum(dim=1).tolist()
    image_start = full["input_ids"][1].tolist().index(processor.image_token_id)
    assert prompt_lengths[0] < image_start  # row 0 fits whatever the cut below
    # Row 1's prompt does not fit and the cut would land inside its image tokens: TRL cuts silently, we refuse
    with pytest.raises(PreferenceDataError, match="Row 1, column 'prompt'.*image tokens fit"):
        VisionPreferenceCollator(processor, max_length=image_start + 2)(rows())
    # A cut after the image but before the completion is also refused (no completion token would be left)
    with pytest.raises(PreferenceDataError, match="Row 1, column 'prompt'.*no completion token"):
        VisionPreferenceCollator(processor, max_length=prompt_lengths[1])(rows())
    batch = VisionPreferenceCollator(processor, max_length=prompt_lengths[1] + 1)(rows())
    assert batch["completion_mask"].sum(dim=1).tolist()[1::2] == [1, 1]  # row 1's chosen and rejected
    assert torch.equal(batch["input_ids"][1], full["input_ids"][1, : prompt_lengths[1] + 1])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda row: row.pop("images"), "Row 1, column 'images'.*neither key"),
        (lambda row: row.update(images=[None]), "Row 1, column 'images'.*None at position 0"),
        (lambda row: row.pop("chosen"), "Row 1, column 'chosen'"),
    ],
)
def test_vision_collator_bad_rows_name_row_and_column(vlm, change, match):
    _, path = vlm
    rows = _vision_rows()
    change(rows[1])
    with pytest.raises(PreferenceDataError, match=match):
        VisionPreferenceCollator(load_tiny_vlm_processor(path))(rows)


def test_vision_collator_bad_options(vlm):
    _, path = vlm
    processor = load_tiny_vlm_processor(path)
    with pytest.raises(ValueError, match="`processor`"):
        VisionPreferenceCollator(processor.tokenizer)
    with pytest.raises(ValueError, match="`truncation_mode`"):
        VisionPreferenceCollator(processor, truncation_mode="left")


def test_stock_dpo_trainer_with_vision_collator(vlm, tmp_path):
    _, path = vlm
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_tiny_vlm_processor(path)
    colors = ["red", "blue", "green", "white"]
    dataset = Dataset.from_dict(
        {
            "images": [[Image.new("RGB", (32, 32), c)] for c in colors],
            "prompt": [[{"role": "system", "content": SYSTEM * 2}, {"role": "user", "content": "Colour?"}]] * 4,
            "chosen": [[{"role": "assistant", "content": c}] for c in colors],
            "rejected": [[{"role": "assistant", "content": "A dog."}] for _ in colors],
        }
    )
    collator = VisionPreferenceCollator(
        processor, max_length=64, truncation_mode="keep_end", padding_side="left", pad_to_multiple_of=8
    )
    assert collator([dataset[0]])["input_ids"].shape[1] == 64  # the system prompt really is cut
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = DPOTrainer(
        model=model,
        args=_dpo_args(tmp_path, per_device_train_batch_size=2, max_length=None),
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(torch.isfinite(T(log["loss"])) for log in logs)
    assert logs[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert any("vision" in n or "visual" in n for n in changed) and any("language_model" in n for n in changed)
