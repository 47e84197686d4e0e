import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image
from transformers import AutoModelForImageTextToText
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from trl_extras.collators import CORRUPTED_PREFIX, DataCollatorForMDPO
from trl_extras.data import PreferenceDataError
from trl_extras.losses.mdpo import anchor_loss, conditional_preference_loss, conditional_reward_margin
from trl_extras.testing import build_tiny_vlm
from trl_extras.testing._vlm import load_tiny_vlm_processor
from trl_extras.trainer.mdpo_config import MDPOConfig
from trl_extras.trainer.mdpo_trainer import MDPOTrainer


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------------------------------------------------------------
# losses on hand-made log-probs


def test_conditional_preference_loss_matches_the_paper():
    beta = 0.5
    chosen, ref_chosen = torch.tensor([-10.0, -4.0, -7.0]), torch.tensor([-11.0, -4.0, -6.0])
    corrupted, ref_corrupted = torch.tensor([-12.0, -3.0, -9.0]), torch.tensor([-11.5, -5.0, -8.0])
    loss = conditional_preference_loss(chosen, ref_chosen, corrupted, ref_corrupted, beta)
    expected = [
        -log_sigmoid(beta * (c - rc) - beta * (k - rk))
        for c, rc, k, rk in zip(chosen.tolist(), ref_chosen.tolist(), corrupted.tolist(), ref_corrupted.tolist())
    ]
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.tensor(expected))
    # row 0 by hand: beta * (1 - (-0.5)) = 0.75
    assert loss[0].item() == pytest.approx(math.log1p(math.exp(-0.75)))
    margin = conditional_reward_margin(chosen, ref_chosen, corrupted, ref_corrupted, beta)
    torch.testing.assert_close(margin, torch.tensor([0.75, -1.0, 0.0]))


def test_conditional_loss_gradient_raises_the_true_image_and_lowers_the_corrupted_one():
    chosen = torch.tensor([-5.0, -3.0], requires_grad=True)
    corrupted = torch.tensor([-5.0, -2.0], requires_grad=True)
    loss = conditional_preference_loss(chosen, chosen.detach(), corrupted, corrupted.detach(), 0.1)
    loss.sum().backward()
    # gradient descent raises log pi(y_w | m) and lowers log pi(y_w | m')
    assert (chosen.grad < 0).all() and (corrupted.grad > 0).all()
    torch.testing.assert_close(chosen.grad, -corrupted.grad)


def test_anchor_loss_matches_the_paper_and_its_threshold():
    beta = 0.1
    chosen, ref_chosen = torch.tensor([-10.0, -20.0, -5.0]), torch.tensor([-12.0, -18.0, -5.0])
    for delta in (0.0, 0.3):
        loss = anchor_loss(chosen, ref_chosen, beta, delta)
        expected = [-log_sigmoid(beta * (c - r) - delta) for c, r in zip(chosen.tolist(), ref_chosen.tolist())]
        torch.testing.assert_close(loss, torch.tensor(expected))
    # delta = 0 and an unchanged policy: log 2
    assert anchor_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), beta).item() == pytest.approx(math.log(2))
    logps = torch.tensor([-3.0], requires_grad=True)
    anchor_loss(logps, torch.tensor([-3.0]), beta).sum().backward()
    assert logps.grad.item() < 0  # descent raises the chosen likelihood


# ---------------------------------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"conditional_weight": -1.0}, "conditional_weight"),
        ({"anchor_weight": float("nan")}, "anchor_weight"),
        ({"anchor": float("inf")}, "anchor"),
        ({"corruption_crop_min_area": 0.0}, "corruption_crop_min_area"),
        ({"corruption_crop_max_area": 1.5}, "corruption_crop_max_area"),
        ({"corruption_mask_fraction": 2.0}, "corruption_mask_fraction"),
        ({"corruption_mask_grid": 0}, "corruption_mask_grid"),
        ({"corruption_noise_std": -0.1}, "corruption_noise_std"),
        ({"truncation_mode": "keep_end", "max_length": 64}, "keep_end"),
        ({"precompute_ref_log_probs": True}, "precompute_ref_log_probs"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MDPOConfig(output_dir="/tmp/unused", bf16=False, **kwargs)


def test_config_defaults_follow_the_paper():
    args = MDPOConfig(output_dir="/tmp/unused", bf16=False, seed=11)
    assert (args.conditional_weight, args.anchor_weight, args.anchor) == (1.0, 1.0, 0.0)
    corruption = args.image_corruption
    assert (corruption.crop_min_area, corruption.crop_max_area) == (0.01, 0.2)
    assert corruption.mask_fraction == 0.0 and corruption.noise_std == 0.0
    assert args.corruption_seed == 11


# ---------------------------------------------------------------------------------------------------------------------
# tiny models and data


@pytest.fixture(scope="module")
def vlm_paths(tmp_path_factory):
    return {family: build_tiny_vlm(tmp_path_factory.mktemp(family), family=family) for family in ("llava", "qwen2_vl")}


def noise_image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def vision_dataset(n=4):
    answers = ["Red.", "A blue square.", "Green.", "A white cat on a mat."]
    return Dataset.from_dict(
        {
            "images": [[noise_image(i)] for i in range(n)],
            "prompt": [[{"role": "user", "content": "What is in the picture?"}]] * n,
            "chosen": [[{"role": "assistant", "content": answers[i % 4]}] for i in range(n)],
            "rejected": [
                [{"role": "assistant", "content": "A dog." if i % 2 else "Nothing at all."}] for i in range(n)
            ],
        }
    )


def make_args(tmp_path, config_class=MDPOConfig, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        max_length=None,
        bf16=False,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
    )
    return config_class(**{**defaults, **kwargs})


def make_trainer(path, tmp_path, dataset=None, **kwargs):
    trainer_kwargs = {k: kwargs.pop(k) for k in ("peft_config", "data_collator") if k in kwargs}
    return MDPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(path),
        args=make_args(tmp_path, **kwargs),
        train_dataset=dataset if dataset is not None else vision_dataset(),
        processing_class=load_tiny_vlm_processor(path),
        **trainer_kwargs,
    )


def perturb(model, scale=0.05):
    """Move the policy away from the reference so every term and margin is non-trivial."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn_like(parameter))


def summed_logps(model, batch, prefix=""):
    """Direct, hook-free log pi(completion | prompt, image) of the rows under ``prefix``."""
    kwargs = {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}
    if not prefix:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith(CORRUPTED_PREFIX)}
    completion_mask = kwargs.pop("completion_mask")
    labels = kwargs["input_ids"].masked_fill(completion_mask == 0, -100)
    with torch.no_grad():
        return model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False).log_probs.sum(dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# collator


def test_collator_adds_chosen_rows_with_corrupted_images(vlm_paths):
    processor = load_tiny_vlm_processor(vlm_paths["llava"])
    rows = [vision_dataset()[i] for i in range(3)]
    collator = DataCollatorForMDPO(base=DataCollatorForVisionPreference(processor), processor=processor, seed=3)
    batch = collator(copy.deepcopy(rows))
    plain = DataCollatorForVisionPreference(processor)(copy.deepcopy(rows))
    for key, value in plain.items():  # DPO's batch is untouched
        torch.testing.assert_close(batch[key], value)
    corrupted = {k[len(CORRUPTED_PREFIX) :]: v for k, v in batch.items() if k.startswith(CORRUPTED_PREFIX)}
    assert set(corrupted) == {"input_ids", "attention_mask", "completion_mask", "pixel_values"}
    assert corrupted["input_ids"].size(0) == 3 and corrupted["pixel_values"].shape == (3, 3, 28, 28)
    for row in range(3):  # same tokens for the chosen response, different image
        chosen = batch["input_ids"][row][batch["completion_mask"][row].bool()]
        torch.testing.assert_close(corrupted["input_ids"][row][corrupted["completion_mask"][row].bool()], chosen)
        assert (corrupted["pixel_values"][row] - batch["pixel_values"][row]).abs().mean() > 0.3
    # seeded: a fresh collator with the same seed draws the same corruptions, another seed does not
    again = DataCollatorForMDPO(base=DataCollatorForVisionPreference(processor), processor=processor, seed=3)
    other = DataCollatorForMDPO(base=DataCollatorForVisionPreference(processor), processor=processor, seed=4)
    key = CORRUPTED_PREFIX + "pixel_values"
    torch.testing.assert_close(again(copy.deepcopy(rows))[key], batch[key])
    assert not torch.equal(other(copy.deepcopy(rows))[key], batch[key])


def test_collator_wraps_the_vision_preference_collator(vlm_paths):
    from trl_extras.collators import VisionPreferenceCollator

    processor = load_tiny_vlm_processor(vlm_paths["qwen2_vl"])
    collator = DataCollatorForMDPO(base=VisionPreferenceCollator(processor), processor=processor)
    batch = collator([vision_dataset()[i] for i in range(2)])
    assert batch[CORRUPTED_PREFIX + "image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    assert batch[CORRUPTED_PREFIX + "input_ids"].size(0) == 2 and batch["input_ids"].size(0) == 4


def test_max_length_that_cuts_into_the_image_is_a_clear_error(vlm_paths, tmp_path):
    trainer = make_trainer(vlm_paths["llava"], tmp_path, max_length=12)  # 16 image tokens do not fit
    with pytest.raises(ValueError, match=r"row 0 .*fills max_length=12"):
        trainer.train()


# ---------------------------------------------------------------------------------------------------------------------
# trainer


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_loss_is_dpo_plus_the_paper_terms_from_one_forward_per_model(vlm_paths, tmp_path, family):
    beta, cw, aw, delta = 0.3, 0.7, 1.3, 0.05
    trainer = make_trainer(
        vlm_paths[family], tmp_path, beta=beta, conditional_weight=cw, anchor_weight=aw, anchor=delta
    )
    perturb(trainer.model)
    rows = [vision_dataset()[i] for i in range(3)]
    batch = trainer.data_collator(rows)
    calls = []
    handles = [
        module.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].size(0)), with_kwargs=True)
        for module in (trainer.model, trainer.ref_model)
    ]
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    for handle in handles:
        handle.remove()
    assert calls == [9, 9]  # one policy and one reference forward, each on chosen + rejected + corrupted rows

    # the same quantities, computed directly: DPOTrainer's own loss and separate forwards per row group
    base = {k: v for k, v in batch.items() if not k.startswith(CORRUPTED_PREFIX)}
    dpo_loss = DPOTrainer._compute_loss(trainer, trainer.model, dict(base), False)
    chosen, ref_chosen = summed_logps(trainer.model, batch)[:3], summed_logps(trainer.ref_model, batch)[:3]
    corrupted = summed_logps(trainer.model, batch, CORRUPTED_PREFIX)
    ref_corrupted = summed_logps(trainer.ref_model, batch, CORRUPTED_PREFIX)
    conditional = -F.logsigmoid(beta * (chosen - ref_chosen) - beta * (corrupted - ref_corrupted)).mean()
    anchor = -F.logsigmoid(beta * (chosen - ref_chosen) - delta).mean()
    torch.testing.assert_close(loss.detach(), (dpo_loss + cw * conditional + aw * anchor).detach())
    assert loss.requires_grad

    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert metrics["mdpo/dpo_loss"] == pytest.approx(dpo_loss.item(), abs=1e-6)
    assert metrics["mdpo/conditional_loss"] == pytest.approx(conditional.item(), abs=1e-6)
    assert metrics["mdpo/anchor_loss"] == pytest.approx(anchor.item(), abs=1e-6)
    margins = beta * (chosen - ref_chosen) - beta * (corrupted - ref_corrupted)
    assert metrics["mdpo/conditional_margin"] == pytest.approx(margins.mean().item(), abs=1e-6)
    assert metrics["mdpo/conditional_accuracy"] == pytest.approx((margins > 0).float().mean().item())
    assert "rewards/margins" in metrics and "logps/chosen" in metrics  # DPO's metrics still there


def test_zero_weights_is_plain_dpo(vlm_paths, tmp_path):
    path = vlm_paths["llava"]
    trainer = make_trainer(path, tmp_path, conditional_weight=0.0, anchor_weight=0.0, beta=0.3)
    assert not isinstance(trainer.data_collator, DataCollatorForMDPO)
    perturb(trainer.model)
    dpo = DPOTrainer(
        model=copy.deepcopy(trainer.model),
        ref_model=copy.deepcopy(trainer.ref_model),
        args=make_args(tmp_path, DPOConfig, beta=0.3),
        train_dataset=vision_dataset(),
        processing_class=load_tiny_vlm_processor(path),
    )
    rows = [vision_dataset()[i] for i in range(2)]
    batch = trainer.data_collator(copy.deepcopy(rows))
    torch.testing.assert_close(batch, dpo.data_collator(copy.deepcopy(rows)))
    trainer.model.train(), dpo.model.train()
    ours, theirs = trainer.compute_loss(trainer.model, dict(batch)), dpo.compute_loss(dpo.model, dict(batch))
    assert ours.item() == theirs.item()
    assert not any(key.startswith("mdpo/") for key in trainer._metrics["train"])


def changed_parameters(before, model):
    return [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_train_steps_are_finite_and_update_the_model(vlm_paths, tmp_path, family):
    trainer = make_trainer(vlm_paths[family], tmp_path, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "mdpo/conditional_loss" in log]
    assert len(logs) == 2
    for log in logs:
        for key in ("loss", "mdpo/dpo_loss", "mdpo/conditional_loss", "mdpo/anchor_loss", "mdpo/conditional_margin"):
            assert math.isfinite(log[key]), key
        assert log["loss"] == pytest.approx(
            log["mdpo/dpo_loss"] + log["mdpo/conditional_loss"] + log["mdpo/anchor_loss"], rel=1e-4
        )
    assert logs[0]["mdpo/conditional_margin"] == 0.0  # policy == reference at step 0
    changed = changed_parameters(before, trainer.model)
    assert any("vision" in n or "visual" in n for n in changed) and any("language_model" in n for n in changed)


def test_conditional_margin_rises(vlm_paths, tmp_path):
    """Noise images vs. blown-up crops of them: the model learns to prefer the chosen answer with the true image."""
    trainer = make_trainer(vlm_paths["llava"], tmp_path, max_steps=10, beta=0.5, anchor_weight=0.0)
    trainer.train()
    margins = [log["mdpo/conditional_margin"] for log in trainer.state.log_history if "mdpo/conditional_margin" in log]
    accuracies = [
        log["mdpo/conditional_accuracy"] for log in trainer.state.log_history if "mdpo/conditional_accuracy" in log
    ]
    assert margins[0] == 0.0  # policy == reference
    assert np.mean(margins[-3:]) > 0.3 and np.mean(margins[-3:]) > np.mean(margins[:3]) + 0.3, margins
    assert np.mean(accuracies[-3:]) > 0.6 > np.mean(accuracies[:3]), accuracies


def test_lora_reference_is_the_disabled_adapter(vlm_paths, tmp_path):
    from peft import LoraConfig

    trainer = make_trainer(
        vlm_paths["qwen2_vl"], tmp_path, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    assert trainer.ref_model is None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = changed_parameters(before, trainer.model)
    assert changed and all("lora_" in n for n in changed)
    log = trainer.state.log_history[-2]
    assert all(math.isfinite(log[k]) for k in ("mdpo/dpo_loss", "mdpo/conditional_loss", "mdpo/anchor_loss"))


def test_qlora_switch(vlm_paths, tmp_path):
    from trl_extras.quantization import QLoRAConfig, is_4bit_model, load_qlora_model

    path = vlm_paths["llava"]
    model = load_qlora_model(
        path, QLoRAConfig(bnb_4bit_compute_dtype="float32", lora_r=4), model_class=AutoModelForImageTextToText
    )
    assert is_4bit_model(model)
    trainer = MDPOTrainer(
        model=model,
        args=make_args(tmp_path),
        train_dataset=vision_dataset(),
        processing_class=load_tiny_vlm_processor(path),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert changed_parameters(before, trainer.model)
    log = trainer.state.log_history[-2]
    assert all(math.isfinite(log[k]) for k in ("mdpo/dpo_loss", "mdpo/conditional_loss", "mdpo/anchor_loss"))


# ---------------------------------------------------------------------------------------------------------------------
# bad input


def png_bytes(seed):
    buffer = io.BytesIO()
    noise_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "bad_images, row, expected",
    [
        ([None], 1, "an image"),
        ([b"definitely not a png"], 2, "a readable image"),
        ([png_bytes(0), png_bytes(1)], 3, "as many images as image placeholders"),
    ],
    ids=["missing", "unreadable", "count-mismatch"],
)
def test_bad_image_data_gets_the_data_layers_errors(vlm_paths, tmp_path, bad_images, row, expected):
    columns = vision_dataset().remove_columns("images").to_dict()
    columns["images"] = [[png_bytes(i)] for i in range(4)]  # encoded images, as a dataset stored on disk holds them
    columns["images"][row] = bad_images
    # one explicit image placeholder in every prompt (two images in the count-mismatch row)
    columns["prompt"] = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    ] * 4
    with pytest.raises(PreferenceDataError, match=expected) as info:
        make_trainer(vlm_paths["llava"], tmp_path, dataset=Dataset.from_dict(columns))
    assert (info.value.row, info.value.column) == (row, "images")


def test_encoded_images_are_decoded_for_the_corruption(vlm_paths, tmp_path):
    columns = vision_dataset().remove_columns("images").to_dict()
    columns["images"] = [[png_bytes(i)] for i in range(4)]
    trainer = make_trainer(vlm_paths["llava"], tmp_path, dataset=Dataset.from_dict(columns))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch[CORRUPTED_PREFIX + "pixel_values"].shape == batch["pixel_values"][:2].shape


def test_dataset_without_images_is_refused(vlm_paths, tmp_path):
    text_only = vision_dataset().remove_columns("images")
    with pytest.raises(PreferenceDataError, match="'images' \\(list\\) or 'image' column"):
        make_trainer(vlm_paths["llava"], tmp_path, dataset=text_only)


def test_persistent_dataloader_workers_are_named_in_a_warning(vlm_paths, tmp_path):
    with pytest.warns(UserWarning, match="dataloader_persistent_workers=True .* resumed run can differ"):
        make_trainer(vlm_paths["llava"], tmp_path, dataloader_num_workers=1, dataloader_persistent_workers=True)


def test_args_must_be_an_mdpo_config(vlm_paths, tmp_path):
    path = vlm_paths["llava"]
    with pytest.raises(TypeError, match="MDPOConfig"):
        MDPOTrainer(
            model=AutoModelForImageTextToText.from_pretrained(path),
            args=DPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none"),
            train_dataset=vision_dataset(),
            processing_class=load_tiny_vlm_processor(path),
        )


# the TRL surface is pinned in tests/test_trl_surface.py
