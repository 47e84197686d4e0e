"""Diffusion-DPO: the loss against the paper's formula, the collator, and the trainer on a tiny pipeline."""

from __future__ import annotations

import inspect
import io
import math
import os

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image

from trl_extras.collators.diffusion import DiffusionPreferenceCollator, preprocess_image
from trl_extras.losses.diffusion_dpo import (
    DEFAULT_BETA,
    denoising_errors,
    denoising_target,
    diffusion_dpo_loss,
    diffusion_sft_loss,
    implicit_accuracy,
)
from trl_extras.trainer.diffusion_dpo_config import DiffusionDPOConfig

diffusers = pytest.importorskip("diffusers")

RED, BLUE = (220, 30, 30), (30, 30, 220)


# ---------------------------------------------------------------------------------------------- the objective


def _paper_loss(pred_w, pred_l, ref_w, ref_l, target_w, target_l, beta):
    """Equation 14 of arXiv:2311.12908 as the authors' code evaluates it, per pair, in float64 python numbers:
    -log sigmoid(-beta/2 * ((|t_w - p_w|^2 - |t_w - r_w|^2) - (|t_l - p_l|^2 - |t_l - r_l|^2)) / d),
    with d = C*H*W latent elements (the authors average the squared error over them)."""

    def sq(a, b):  # |a - b|^2 / d
        return float(((a.double() - b.double()) ** 2).sum()) / a.numel()

    losses = []
    for i in range(pred_w.shape[0]):
        diff_w = sq(target_w[i], pred_w[i]) - sq(target_w[i], ref_w[i])
        diff_l = sq(target_l[i], pred_l[i]) - sq(target_l[i], ref_l[i])
        inside = -beta / 2 * (diff_w - diff_l)
        losses.append(math.log1p(math.exp(-inside)))  # -log sigmoid(inside)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_matches_the_paper_formula(prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type)
    torch.manual_seed(0)
    batch = 3
    latents_w, latents_l = torch.randn(batch, 4, 2, 2), torch.randn(batch, 4, 2, 2)
    noise = torch.randn(batch, 4, 2, 2)  # shared by both images of a pair, as the timestep
    timesteps = torch.tensor([10, 500, 990])
    latents = torch.cat([latents_w, latents_l])
    target = denoising_target(prediction_type, latents, noise.repeat(2, 1, 1, 1), timesteps.repeat(2), scheduler)

    # the target, written out: epsilon, or v = sqrt(abar) eps - sqrt(1 - abar) x0
    abar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        expected_w, expected_l = noise, noise
    else:
        expected_w = abar.sqrt() * noise - (1 - abar).sqrt() * latents_w
        expected_l = abar.sqrt() * noise - (1 - abar).sqrt() * latents_l
    torch.testing.assert_close(target, torch.cat([expected_w, expected_l]))

    model_pred = target + 0.1 * torch.randn_like(target)
    ref_pred = target + 0.1 * torch.randn_like(target)
    beta = 500.0  # keeps every pair away from saturation so the comparison is sensitive
    model_errors, ref_errors = denoising_errors(model_pred, target), denoising_errors(ref_pred, target)
    losses, chosen_rewards, rejected_rewards = diffusion_dpo_loss(
        *model_errors.chunk(2), *ref_errors.chunk(2), beta=beta
    )
    pred_w, pred_l = model_pred.chunk(2)
    ref_w, ref_l = ref_pred.chunk(2)
    expected = _paper_loss(pred_w, pred_l, ref_w, ref_l, expected_w, expected_l, beta)
    torch.testing.assert_close(losses.double(), expected, rtol=1e-5, atol=1e-6)
    assert 0.01 < expected.min() and expected.max() < 5  # not saturated
    # rewards: -beta/2 (err - ref_err), and the loss is -log sigmoid(r_w - r_l)
    torch.testing.assert_close(chosen_rewards, -beta / 2 * (model_errors - ref_errors)[:batch])
    torch.testing.assert_close(losses, -F.logsigmoid(chosen_rewards - rejected_rewards))


def test_loss_hand_numbers_and_gradient_direction():
    # one pair: the model denoises the preferred image 0.002 worse than the reference, the other 0.001 better
    model_w = torch.tensor([0.102], requires_grad=True)
    model_l = torch.tensor([0.099], requires_grad=True)
    losses, r_w, r_l = diffusion_dpo_loss(model_w, model_l, torch.tensor([0.1]), torch.tensor([0.1]), beta=1000)
    # inside = -500 * ((0.002) - (-0.001)) = -1.5 ; loss = log(1 + e^1.5)
    assert losses.item() == pytest.approx(math.log1p(math.exp(1.5)), rel=1e-5)
    assert r_w.item() == pytest.approx(-1.0, rel=1e-4) and r_l.item() == pytest.approx(0.5, rel=1e-4)
    losses.sum().backward()
    assert model_w.grad.item() > 0  # descending lowers the preferred image's error ...
    assert model_l.grad.item() < 0  # ... and raises the dispreferred one's
    assert DEFAULT_BETA == 5000.0
    torch.testing.assert_close(diffusion_sft_loss(torch.tensor([0.3, 0.1])), torch.tensor([0.3, 0.1]))
    accuracy = implicit_accuracy(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(accuracy, torch.tensor([1.0, 0.5, 0.0]))


def test_errors_are_per_sample_means_in_float32():
    prediction = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]], dtype=torch.bfloat16)  # (2, 1, 1, 2)
    target = torch.zeros(2, 1, 1, 2)
    errors = denoising_errors(prediction, target)
    assert errors.dtype == torch.float32
    torch.testing.assert_close(errors, torch.tensor([2.5, 0.0]))
    with pytest.raises(ValueError, match="prediction_type"):
        denoising_target("flow", target, target, torch.tensor([1]), None)


# ---------------------------------------------------------------------------------------------- the collator


def _image(rows):
    return Image.fromarray(torch.tensor(rows, dtype=torch.uint8).numpy(), mode="RGB")


def test_collator_exact_tensors_on_a_hand_made_image():
    # 2x2 image: top row red, black; bottom row white, (0, 51, 255)
    chosen = _image([[[255, 0, 0], [0, 0, 0]], [[255, 255, 255], [0, 51, 255]]])
    pixels, size, crop = preprocess_image(chosen, 2)
    expected = torch.tensor(
        [
            [[1.0, -1.0], [1.0, -1.0]],  # R
            [[-1.0, -1.0], [1.0, 51 / 127.5 - 1]],  # G
            [[-1.0, -1.0], [1.0, 1.0]],  # B
        ]
    )
    torch.testing.assert_close(pixels, expected)
    assert size == (2, 2) and crop == (0, 0)
    flipped, _, _ = preprocess_image(chosen, 2, flip=True)
    torch.testing.assert_close(flipped, expected.flip(-1))

    # a 2x4 (h x w) image keeps its height and loses one column each side under the centre crop
    wide = _image([[[0, 0, 0], [10, 10, 10], [20, 20, 20], [30, 30, 30]]] * 2)
    pixels, size, crop = preprocess_image(wide, 2)
    torch.testing.assert_close(pixels[0], torch.tensor([[10.0, 20.0], [10.0, 20.0]]) / 127.5 - 1)
    assert size == (2, 4) and crop == (0, 1)

    class Tokenizer:  # records what the collator asks for
        model_max_length = 5

        def __call__(self, captions, **kwargs):
            assert kwargs == {"padding": "max_length", "max_length": 5, "truncation": True, "return_tensors": "pt"}
            return type("Encoding", (), {"input_ids": torch.arange(5).repeat(len(captions), 1)})

    collator = DiffusionPreferenceCollator(Tokenizer(), tokenizer_2=Tokenizer(), resolution=2)
    batch = collator([{"caption": "a", "chosen": chosen, "rejected": wide}])
    assert set(batch) == {
        "chosen_pixel_values", "rejected_pixel_values", "input_ids", "input_ids_2",
        "chosen_original_sizes", "rejected_original_sizes", "chosen_crop_top_lefts", "rejected_crop_top_lefts",
    }  # fmt: skip
    torch.testing.assert_close(batch["chosen_pixel_values"][0], expected)
    assert batch["rejected_pixel_values"].shape == (1, 3, 2, 2)
    assert batch["rejected_original_sizes"].tolist() == [[2, 4]] and batch["rejected_crop_top_lefts"].tolist() == [
        [0, 1]
    ]
    sft = DiffusionPreferenceCollator(Tokenizer(), resolution=2, loss_type="sft")([{"caption": "a", "chosen": chosen}])
    assert "rejected_pixel_values" not in sft and "input_ids_2" not in sft
    with pytest.raises(TypeError, match=r"row 0, column 'rejected': expected a PIL image, got bytes"):
        collator([{"caption": "a", "chosen": chosen, "rejected": b"not decoded"}])


# ---------------------------------------------------------------------------------------------- config


def test_config_validation_names_the_field():
    for kwargs, field in [
        ({"beta": 0.0}, "beta"),
        ({"loss_type": "hinge"}, "loss_type"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"resolution": -8}, "resolution"),
        ({"ties": "keep"}, "ties"),
        ({"sample_steps": 0}, "sample_steps"),
    ]:
        with pytest.raises(ValueError, match=f"DiffusionDPOConfig.{field}"):
            DiffusionDPOConfig("/tmp/unused", bf16=False, **kwargs)
    with pytest.warns(UserWarning, match="cache_latents"):
        DiffusionDPOConfig("/tmp/unused", bf16=False, cache_latents=True, random_flip=True)


def test_overridden_trainer_hooks_keep_their_signatures():
    """We override these Trainer / TRL hooks; fail first when transformers or TRL changes them."""
    from transformers import Trainer
    from trl.trainer.base_trainer import _BaseTrainer

    expected = {
        "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        "prediction_step": ["self", "model", "inputs", "prediction_loss_only", "ignore_keys"],
        "evaluate": ["self", "eval_dataset", "ignore_keys", "metric_key_prefix"],
        "log": ["self", "logs", "start_time"],
        "_set_signature_columns_if_needed": ["self"],
        "_save": ["self", "output_dir", "state_dict"],
        "save_model": ["self", "output_dir", "_internal_call"],
        "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
        "_load_best_model": ["self"],
        "_save_checkpoint": ["self", "model", "trial"],
    }
    for name, parameters in expected.items():
        assert list(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name
    assert list(inspect.signature(_BaseTrainer._send_telemetry).parameters) == ["self"]
    assert "activation_checkpointing_enable" in inspect.getsource(Trainer.train)  # the name our UNet answers to


# ---------------------------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory):
    from trl_extras.testing import build_tiny_diffusion_pipeline

    return build_tiny_diffusion_pipeline(tmp_path_factory.mktemp("tiny-sd"))


def _pairs(n=8, chosen=RED, rejected=BLUE, caption="a square"):
    size = (32, 32)
    return Dataset.from_list(
        [{"caption": caption, "chosen": Image.new("RGB", size, chosen), "rejected": Image.new("RGB", size, rejected)}]
        * n
    )


def _config(output_dir, **kwargs):
    defaults = dict(
        bf16=False,
        report_to="none",
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        gradient_checkpointing=False,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    defaults.update(kwargs)
    return DiffusionDPOConfig(str(output_dir), **defaults)


def _lora(**kwargs):
    from peft import LoraConfig

    return LoraConfig(**{"r": 4, "lora_alpha": 4, "init_lora_weights": "gaussian", **kwargs})


def _snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


def test_full_fine_tuning_trains_the_unet_never_the_reference(pipeline_path, tmp_path):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    args = _config(
        tmp_path, learning_rate=1e-4, sample_prompts=["a square"], sample_steps=2, sample_num_inference_steps=2
    )
    trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=_pairs())
    unet, ref_unet, pipe = trainer.model, trainer.ref_unet, trainer.pipeline
    assert ref_unet is not None and ref_unet is not unet and not trainer.is_peft
    before = {name: _snapshot(module) for name, module in [("unet", unet), ("ref", ref_unet), ("vae", pipe.vae)]}
    before["text_encoder"] = _snapshot(pipe.text_encoder)
    trainer.train()

    assert len(_changed(before["unet"], unet)) > 0.9 * len(before["unet"])  # (nearly) every tensor moved
    for name, module in [("ref", ref_unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder)]:
        assert not _changed(before[name], module), name
    logs = trainer.state.log_history[1]
    for key in ["loss", "rewards/accuracies", "rewards/margins", "diffusion_dpo/model_mse_chosen",
                "diffusion_dpo/ref_mse_rejected"]:  # fmt: skip
        assert math.isfinite(logs[key]), key
    assert os.path.isfile(tmp_path / "samples" / "step-2.png")  # the sample-image callback rendered a grid

    trainer.save_model()  # a full fine-tune saves a complete pipeline
    reloaded = diffusers.DiffusionPipeline.from_pretrained(str(tmp_path))
    assert not _changed(_snapshot(unet), reloaded.unet)


def test_lora_reference_is_the_disabled_adapter_and_loads_into_a_pipeline(pipeline_path, tmp_path):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    args = _config(tmp_path, gradient_checkpointing=True)
    trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=_pairs(), peft_config=_lora())
    unet = trainer.model
    assert trainer.is_peft and trainer.ref_unet is None  # no second UNet
    before = _snapshot(unet)
    trainer.train()
    assert unet.is_gradient_checkpointing  # switched on by Trainer.train through our bridge
    changed = _changed(before, unet)
    assert changed and all("lora_" in name for name in changed)  # only adapters move
    base_names = [name for name in before if "lora_" not in name]
    assert base_names and not changed & set(base_names)

    trainer.save_model()
    assert os.path.isfile(tmp_path / "pytorch_lora_weights.safetensors")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(pipeline_path)
    plain = pipe("a square", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    pipe.load_lora_weights(str(tmp_path))
    loaded = dict(pipe.unet.named_parameters())
    for name, value in unet.named_parameters():
        if "lora_B" in name:
            torch.testing.assert_close(loaded[name.replace(".default.", ".default_0.")], value)
    tuned = pipe("a square", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert tuned.images.shape == (1, 3, 32, 32) and not torch.equal(tuned.images, plain.images)


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_resuming_gives_the_same_weights_as_an_uninterrupted_run(pipeline_path, tmp_path, use_lora):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    def run(output_dir, resume=None):
        args = _config(output_dir, max_steps=2, save_strategy="steps", save_steps=1, learning_rate=1e-4)
        peft_config = _lora() if use_lora else None
        trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=_pairs(), peft_config=peft_config)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "checkpoint-1"
    assert (checkpoint / ("pytorch_lora_weights.safetensors" if use_lora else "unet")).exists()
    assert "diffusion-dpo" in (tmp_path / "straight" / "README.md").read_text()  # model card, as TRL writes it
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.state.global_step == 2
    straight_weights = _snapshot(straight.model)
    assert not _changed(straight_weights, resumed.model)
    # and the step after the checkpoint did change them
    resumed._load_from_checkpoint(str(checkpoint))
    assert _changed(straight_weights, resumed.model)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_lora_reloads_into_a_pipeline_to_the_same_unet_output(pipeline_path, tmp_path, sdxl):
    """LoRA with alpha != r (scale 2): the UNet that `load_lora_weights` gives computes exactly what the trained one
    does, so the adapter's weights and its scale both survive diffusers' format."""
    from trl_extras.testing import build_tiny_diffusion_pipeline
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    path = build_tiny_diffusion_pipeline(tmp_path / "tiny-sdxl", sdxl=True) if sdxl else pipeline_path
    args = _config(tmp_path / "out", learning_rate=1e-2)
    trainer = DiffusionDPOTrainer(path, args=args, train_dataset=_pairs(), peft_config=_lora(lora_alpha=8))
    trainer.train()
    trainer.save_model()
    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    pipe.load_lora_weights(str(tmp_path / "out"))

    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    extra = {}
    if sdxl:  # pooled text embedding and (original size, crop, target size)
        time_ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=generator), "time_ids": time_ids}
    timesteps = torch.tensor([100, 700])
    with torch.no_grad():
        trained = trainer.model(noisy, timesteps, text, **extra).sample
        reloaded = pipe.unet(noisy, timesteps, text, **extra).sample
        pipe.unet.disable_lora()
        base = pipe.unet(noisy, timesteps, text, **extra).sample
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=0)
    assert (trained - base).abs().max() > 1e-3  # the adapter matters


def test_dpo_learns_the_preferred_colour(pipeline_path, tmp_path):
    """Red preferred over blue for "a square". On held-out shades with held-out noise and timesteps, the implicit
    accuracy rises from chance (every pair a tie at 0.5) to nearly 1, and the DPO loss falls from log 2."""
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    args = _config(
        tmp_path, max_steps=4, per_device_train_batch_size=4, per_device_eval_batch_size=32, learning_rate=1e-4,
        lr_scheduler_type="constant", cache_latents=True,
    )  # fmt: skip
    held_out = _pairs(32, chosen=(235, 45, 35), rejected=(40, 35, 210))
    trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=_pairs(16), eval_dataset=held_out)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert before["eval_rewards/accuracies"] == 0.5 and before["eval_rewards/margins"] == 0.0
    assert before["eval_loss"] == pytest.approx(math.log(2))
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_loss"] < 0.2
    assert after["eval_diffusion_dpo/ref_mse_chosen"] == before["eval_diffusion_dpo/ref_mse_chosen"]  # same noise


def test_sdxl_with_cached_latents(tmp_path):
    from trl_extras.testing import build_tiny_diffusion_pipeline
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    path = build_tiny_diffusion_pipeline(tmp_path / "tiny-sdxl", sdxl=True)
    trainer = DiffusionDPOTrainer(
        path, args=_config(tmp_path / "out", max_steps=1, cache_latents=True), train_dataset=_pairs(4),
        peft_config=_lora(),
    )  # fmt: skip
    assert trainer.is_sdxl
    row = trainer.train_dataset[0]
    assert row["chosen_latent_dist"].shape == (8, 16, 16)  # mean and log-variance of a 4 x 16 x 16 latent
    assert row["prompt_embeds"].shape == (77, 64) and row["pooled_prompt_embeds"].shape == (32,)
    assert row["chosen_time_ids"].tolist() == [32, 32, 0, 0, 32, 32]  # original size, crop top-left, target size
    before = _snapshot(trainer.model)
    trainer.train()
    assert _changed(before, trainer.model)


def test_sft_baseline_with_v_prediction(tmp_path):
    from trl_extras.testing import build_tiny_diffusion_pipeline
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    path = build_tiny_diffusion_pipeline(tmp_path / "tiny-v", prediction_type="v_prediction")
    args = _config(tmp_path / "out", max_steps=1, loss_type="sft")
    trainer = DiffusionDPOTrainer(path, args=args, train_dataset=_pairs(2))
    assert trainer.prediction_type == "v_prediction" and trainer.ref_unet is None  # SFT needs no reference
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["loss"] == pytest.approx(logs["diffusion_dpo/model_mse_chosen"], rel=1e-4)
    assert not any(key.startswith("rewards/") for key in logs)


def test_bf16_lora_with_gradient_accumulation_and_checkpointing(pipeline_path, tmp_path):
    """Frozen modules and LoRA's base UNet run in bf16 (CPU autocast), the adapters train in fp32."""
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    args = _config(
        tmp_path, bf16=True, use_cpu=True, max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=2,
        gradient_checkpointing=True,
    )  # fmt: skip
    trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=_pairs(2), peft_config=_lora())
    pipe, unet = trainer.pipeline, trainer.model
    assert pipe.vae.dtype == pipe.text_encoder.dtype == unet.conv_in.weight.dtype == torch.bfloat16
    assert {p.dtype for p in unet.parameters() if p.requires_grad} == {torch.float32}
    before = _snapshot(unet)
    trainer.train()
    assert _changed(before, unet) and math.isfinite(trainer.state.log_history[0]["loss"])


def _quantize_unet_4bit(unet):
    """What diffusers' bitsandbytes loader does on a GPU, done by hand on the CPU: every nn.Linear becomes a
    bitsandbytes nf4 Linear4bit (diffusers' own loader refuses to run without CUDA)."""
    bnb = pytest.importorskip("bitsandbytes")
    for module in list(unet.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                quantized = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=child.bias is not None,
                    compute_dtype=torch.float32, quant_type="nf4",
                )  # fmt: skip
                quantized.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
                quantized.bias = child.bias
                setattr(module, name, quantized.to("cpu"))
    return unet


def test_qlora_on_a_4bit_unet(pipeline_path, tmp_path):
    from trl_extras.quantization import QLoRAConfig
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    if not torch.cuda.is_available():  # the QLoRA switch loads through diffusers, which needs a GPU: say so clearly
        with pytest.raises(RuntimeError, match="requires a CUDA GPU"):
            DiffusionDPOTrainer(
                pipeline_path, args=_config(tmp_path), train_dataset=_pairs(2), quantization_config=QLoRAConfig()
            )
    pipe = diffusers.DiffusionPipeline.from_pretrained(pipeline_path)
    pipe.unet = _quantize_unet_4bit(pipe.unet)
    trainer = DiffusionDPOTrainer(
        pipe, args=_config(tmp_path, max_steps=1), train_dataset=_pairs(2), peft_config=_lora()
    )
    before = _snapshot(trainer.model)
    trainer.train()
    changed = _changed(before, trainer.model)
    assert changed and all("lora_" in name for name in changed)
    assert trainer.state.log_history[0]["diffusion_dpo/ref_mse_chosen"] > 0


def _with_image(column, value, row=1):
    rows = _pairs(3).to_list()
    rows[row][column] = value
    return rows


def test_bad_data_fails_early_with_the_row_and_column(pipeline_path, tmp_path):
    from trl_extras.data import PreferenceDataError
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    def check(rows, match, **config):
        with pytest.raises(PreferenceDataError, match=match) as error:
            DiffusionDPOTrainer(pipeline_path, args=_config(tmp_path, **config), train_dataset=Dataset.from_list(rows))
        return error.value

    png = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(png, format="PNG")
    pick_a_pic = [
        {"caption": "a square", "jpg_0": png.getvalue(), "jpg_1": b"\x89PNG broken", "label_0": 1},
    ]
    error = check(pick_a_pic, r"Row 0, column 'jpg_1'")  # unreadable image
    assert error.row == 0 and error.column == "jpg_1"
    error = check(_with_image("rejected", None), r"Row 1, column 'rejected'")  # missing image
    assert error.row == 1
    tie = [{"caption": "a square", "jpg_0": png.getvalue(), "jpg_1": png.getvalue()[:-1] + b"\x00", "label_0": 0.5}]
    check(tie, r"Row 0.*not a tie", ties="raise")
    check(_with_image("rejected", Image.new("RGB", (16, 32), BLUE)), r"Row 1.*one size", allow_size_mismatch=False)


def test_pick_a_pic_rows_are_oriented_and_ties_dropped(pipeline_path, tmp_path):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    def png(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    rows = [
        {"caption": "a square", "jpg_0": png(RED), "jpg_1": png(BLUE), "label_0": 1},
        {"caption": "a square", "jpg_0": png(BLUE), "jpg_1": png(RED), "label_0": 0},
        {"caption": "a square", "jpg_0": png(BLUE), "jpg_1": png(RED), "label_0": 0.5},  # a tie: dropped
    ]
    trainer = DiffusionDPOTrainer(pipeline_path, args=_config(tmp_path), train_dataset=Dataset.from_list(rows))
    assert len(trainer.train_dataset) == 2
    assert all(row["chosen"].getpixel((0, 0)) == RED for row in trainer.train_dataset)
