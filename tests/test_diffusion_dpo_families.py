"""Diffusion-DPO on the flow-matching families (SD3, Flux.1-dev and schnell layouts, Sana), one table of cases.

Each family runs the same contract tests: one plain-SGD step equals ``-lr * grad`` of the objective written out here
(full fine-tuning and LoRA), the loss is log 2 while the policy equals the reference, winner and loser share noise and
noise level, save/reload is exact, and resuming equals an uninterrupted run.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image

from trl_extras.trainer.diffusion_dpo_config import DiffusionDPOConfig

diffusers = pytest.importorskip("diffusers")

T5_LENGTH = 16  # max_sequence_length of the tests: keeps the joint attention short
BETA = 500.0

#: (case id, builder name, builder kwargs, diffusers pipeline class, family name)
FAMILIES = [
    ("sd3", "build_tiny_sd3_pipeline", {}, "StableDiffusion3Pipeline", "sd3"),
    ("flux-dev", "build_tiny_flux_pipeline", {"layout": "dev"}, "FluxPipeline", "flux"),
    ("flux-schnell", "build_tiny_flux_pipeline", {"layout": "schnell"}, "FluxPipeline", "flux"),
    ("sana", "build_tiny_sana_pipeline", {}, "SanaPipeline", "sana"),
]
CASES = [pytest.param(case, use_lora, id=f"{case[0]}-{'lora' if use_lora else 'full'}") for case in FAMILIES for use_lora in (False, True)]  # fmt: skip
# schnell differs from dev only in the guidance embedding and the shift, which the step and noise-level tests cover
FAMILY_CASES = [case for case in CASES if case.values[0][0] != "flux-schnell"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Each tiny pipeline built once for the module."""
    import trl_extras.testing as testing

    root = tmp_path_factory.mktemp("tiny-flow")
    return {case: getattr(testing, builder)(root / case, **kwargs) for case, builder, kwargs, _, _ in FAMILIES}


def _pairs(n=4):
    # two prompts, two colour pairs: the pairs of a batch differ
    rows = [
        {"caption": "a red square", "chosen": Image.new("RGB", (32, 32), (220, 30, 30)),
         "rejected": Image.new("RGB", (32, 32), (30, 30, 220))},
        {"caption": "a green circle", "chosen": Image.new("RGB", (32, 32), (30, 200, 60)),
         "rejected": Image.new("RGB", (32, 32), (200, 200, 200))},
    ]  # fmt: skip
    return Dataset.from_list([rows[i % 2] for i in range(n)])


def _config(output_dir, **kwargs):
    defaults = dict(
        bf16=False, report_to="none", per_device_train_batch_size=2, max_steps=1, logging_steps=1,
        learning_rate=1e-3, gradient_checkpointing=False, save_strategy="no", disable_tqdm=True,
        dataloader_pin_memory=False, seed=0, resolution=32, max_sequence_length=T5_LENGTH, beta=BETA,
    )  # fmt: skip
    defaults.update(kwargs)
    return DiffusionDPOConfig(str(output_dir), **defaults)


def _lora():
    from peft import LoraConfig

    # alpha != r: the adapter's scale (alpha / r = 2) must survive save/reload, which alpha = r could not show
    return LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian")


def _snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


# ---------------------------------------------------------------------------------------------- the objective, by hand


def _text(pipe, family, captions):
    """Prompt conditioning as each family is trained, written out (not the pipeline's `encode_prompt`): the text
    states and the second input (pooled projection, or Sana's attention mask)."""

    def ids(tokenizer, length):
        return tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")

    with torch.no_grad():
        if family == "sd3":
            first = pipe.text_encoder(ids(pipe.tokenizer, 77).input_ids, output_hidden_states=True)
            second = pipe.text_encoder_2(ids(pipe.tokenizer_2, 77).input_ids, output_hidden_states=True)
            clip = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)  # penultimate layers
            t5 = pipe.text_encoder_3(ids(pipe.tokenizer_3, T5_LENGTH).input_ids)[0]
            clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # zero-padded to T5's width
            return torch.cat([clip, t5], dim=1), torch.cat([first.text_embeds, second.text_embeds], dim=-1)
        if family == "sana":  # Gemma-2 states of the lower-cased caption, and their mask
            pipe.tokenizer.padding_side = "right"
            tokens = pipe.tokenizer([c.lower() for c in captions], padding="max_length", max_length=T5_LENGTH,
                                    truncation=True, return_tensors="pt")  # fmt: skip
            return pipe.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0], tokens.attention_mask
        pooled = pipe.text_encoder(ids(pipe.tokenizer, 77).input_ids).pooler_output
        return pipe.text_encoder_2(ids(pipe.tokenizer_2, T5_LENGTH).input_ids)[0], pooled


def _velocity(family, transformer, noisy, sigmas, embeds, pooled):
    """The transformer's velocity for ``noisy`` (N, C, h, w), each family's call written out."""
    if family == "sd3":
        return transformer(
            hidden_states=noisy, timestep=1000 * sigmas, encoder_hidden_states=embeds, pooled_projections=pooled,
            return_dict=False,
        )[0]  # fmt: skip
    if family == "sana":  # `pooled` is the text attention mask
        return transformer(
            noisy, encoder_hidden_states=embeds, encoder_attention_mask=pooled, timestep=1000 * sigmas,
            return_dict=False,
        )[0]  # fmt: skip
    n, c, h, w = noisy.shape  # Flux: 2 x 2 patches as tokens, positions (0, row, col), text positions 0
    tokens = noisy.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w // 4, 4 * c)
    img_ids = torch.zeros(h // 2, w // 2, 3)
    img_ids[..., 1] = torch.arange(h // 2)[:, None]
    img_ids[..., 2] = torch.arange(w // 2)[None, :]
    guidance = torch.full((n,), 3.5) if transformer.config.guidance_embeds else None
    out = transformer(
        hidden_states=tokens, timestep=sigmas, guidance=guidance, pooled_projections=pooled,
        encoder_hidden_states=embeds, txt_ids=torch.zeros(embeds.shape[1], 3), img_ids=img_ids.view(-1, 3),
        return_dict=False,
    )[0]  # fmt: skip
    return out.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def _objective(family, policy, reference, step, embeds, pooled):
    """-mean log sigmoid(-beta/2 ((e_w - e_w_ref) - (e_l - e_l_ref))), e = mean (v - (eps - x0))^2 over latents."""
    x0, eps, sigmas = step.latents, step.noise, step.levels.sigmas
    s = sigmas.view(-1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * eps
    target = eps - x0
    embeds, pooled = embeds.repeat(2, 1, 1), pooled.repeat(2, 1)
    errors = ((_velocity(family, policy, noisy, sigmas, embeds, pooled) - target) ** 2).mean(dim=(1, 2, 3))
    with torch.no_grad(), reference() as ref:
        ref_errors = ((_velocity(family, ref, noisy, sigmas, embeds, pooled) - target) ** 2).mean(dim=(1, 2, 3))
    e_w, e_l = errors.chunk(2)
    r_w, r_l = ref_errors.chunk(2)
    return -F.logsigmoid(-BETA / 2 * ((e_w - r_w) - (e_l - r_l))).mean()


def _record_steps(trainer):
    steps = []
    original = trainer.noised_latents

    def recording(*args, **kwargs):
        steps.append(original(*args, **kwargs))
        return steps[-1]

    trainer.noised_latents = recording
    return steps


@pytest.mark.parametrize("case, use_lora", CASES)
def test_one_sgd_step_is_minus_lr_times_the_gradient_and_saves_exactly(pipelines, tmp_path, case, use_lora):
    import contextlib

    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    name, _, _, pipeline_class, family = case
    lr = 1e-3
    args = _config(tmp_path, optim="sgd", learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0)
    trainer = DiffusionDPOTrainer(
        pipelines[name], args=args, train_dataset=_pairs(2), peft_config=_lora() if use_lora else None
    )
    assert trainer.family.name == family and trainer.prediction_type == "flow_matching"
    assert type(trainer.pipeline).__name__ == pipeline_class
    assert (trainer.ref_model is None) == use_lora  # LoRA: the disabled adapter is the reference, no copy
    model = trainer.model
    policy = copy.deepcopy(model)
    if use_lora:

        @contextlib.contextmanager
        def reference():
            policy.disable_adapters()
            try:
                yield policy
            finally:
                policy.enable_adapters()
    else:
        frozen = copy.deepcopy(model).requires_grad_(False)

        def reference():
            return contextlib.nullcontext(frozen)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and (all("lora_" in n for n in trainable) if use_lora else len(trainable) > 20)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    steps = _record_steps(trainer)
    trainer.train()

    # winner and loser share noise and noise level; the two pairs do not
    (step,) = steps
    assert torch.equal(step.noise[:2], step.noise[2:]) and not torch.equal(step.noise[0], step.noise[1])
    for values in (step.levels.timesteps, step.levels.sigmas):
        assert torch.equal(values[:2], values[2:]) and values[0] != values[1]
    assert torch.all((step.levels.sigmas > 0) & (step.levels.sigmas <= 1))
    # the latents are the VAE's, shifted and scaled (up to the posterior's tiny std; Sana's DC-AE is deterministic)
    vae = trainer.pipeline.vae
    pixels = trainer.image_collator(list(trainer.train_dataset))["chosen_pixel_values"]
    with torch.no_grad():
        encoded = vae.encode(pixels)
    mean = encoded.latent if family == "sana" else encoded.latent_dist.mean
    expected = (mean - getattr(vae.config, "shift_factor", 0.0)) * vae.config.scaling_factor
    torch.testing.assert_close(step.latents[:2], expected, atol=0.05, rtol=0)

    # the loss with policy == reference is log 2
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert trainer.state.log_history[0]["rewards/margins"] == 0.0

    embeds, pooled = _text(trainer.pipeline, family, ["a red square", "a green circle"])
    loss = _objective(family, policy, reference, step, embeds, pooled)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    grads = dict(policy.named_parameters())
    after = dict(model.named_parameters())
    update = torch.cat([(after[n].detach() - before[n]).flatten() for n in trainable])
    expected = torch.cat([(-lr * grads[n].grad).flatten() for n in trainable])
    assert expected.norm() > 0
    relative_error = ((update - expected).norm() / expected.norm()).item()
    assert relative_error <= 2e-3, relative_error

    # save / reload exactly: full weights as a pipeline, LoRA in diffusers' load_lora_weights format
    trainer.save_model()
    if use_lora:
        pipe = diffusers.DiffusionPipeline.from_pretrained(pipelines[name])
        pipe.load_lora_weights(str(tmp_path))
        loaded = dict(pipe.transformer.named_parameters())
        for n in trainable:
            torch.testing.assert_close(loaded[n.replace(".default.", ".default_0.")], after[n], rtol=0, atol=0)
        # and the loaded pipeline's transformer computes what the trained one does (adapter scale included)
        noisy, sigmas = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0.3, 0.8])
        with torch.no_grad():
            trained = _velocity(family, model, noisy, sigmas, embeds.detach(), pooled.detach())
            reloaded = _velocity(family, pipe.transformer, noisy, sigmas, embeds.detach(), pooled.detach())
            pipe.transformer.disable_lora()
            base = _velocity(family, pipe.transformer, noisy, sigmas, embeds.detach(), pooled.detach())
        torch.testing.assert_close(reloaded, trained, rtol=0, atol=0)
        assert (trained - base).abs().max() > 0  # the adapter changes the output (one step of lr 1e-3)
    else:
        reloaded = diffusers.DiffusionPipeline.from_pretrained(str(tmp_path))
        assert type(reloaded).__name__ == pipeline_class
        assert not _changed(_snapshot(model), reloaded.transformer)
        image = reloaded("a red square", num_inference_steps=2, height=32, width=32, max_sequence_length=T5_LENGTH)
        assert image.images[0].size == (32, 32)


@pytest.mark.parametrize("case, use_lora", FAMILY_CASES)
def test_resuming_gives_the_same_weights_as_an_uninterrupted_run(pipelines, tmp_path, case, use_lora):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    def run(output_dir, resume=None):
        args = _config(output_dir, max_steps=2, save_strategy="steps", save_steps=1, learning_rate=1e-4)
        trainer = DiffusionDPOTrainer(
            pipelines[case[0]], args=args, train_dataset=_pairs(4), peft_config=_lora() if use_lora else None
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "checkpoint-1"
    assert (checkpoint / ("pytorch_lora_weights.safetensors" if use_lora else "transformer")).exists()
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.state.global_step == 2
    straight_weights = _snapshot(straight.model)
    assert not _changed(straight_weights, resumed.model)
    resumed._load_from_checkpoint(str(checkpoint))  # the step after the checkpoint did change them
    assert _changed(straight_weights, resumed.model)


# ---------------------------------------------------------------------------------------------- noise levels


@pytest.mark.parametrize(
    "case, scheme, flow_shift",
    [("sd3", "logit_normal", None), ("sd3", "mode", 2.0), ("sd3", "sigma_sqrt", None), ("flux-dev", "logit_normal", None),
     ("flux-schnell", "cosmap", None), ("sana", "logit_normal", None)],
)  # fmt: skip
def test_noise_levels_follow_diffusers_densities_and_each_familys_shift(pipelines, tmp_path, case, scheme, flow_shift):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from trl_extras.trainer.diffusion import family_for

    pipe = diffusers.DiffusionPipeline.from_pretrained(pipelines[case])
    args = _config(tmp_path, weighting_scheme=scheme, flow_shift=flow_shift, logit_mean=0.3, logit_std=1.2)
    family = family_for(pipe, args)

    def draw(sample, shape):
        return sample(shape, generator=torch.Generator().manual_seed(7), device="cpu")

    levels = family.sample_noise_levels(512, draw, (512, 4, 16, 16))
    u = compute_density_for_timestep_sampling(
        scheme, 512, logit_mean=0.3, logit_std=1.2, mode_scale=1.29, generator=torch.Generator().manual_seed(7)
    )
    if flow_shift is not None:
        shift = flow_shift
    elif case in ("sd3", "sana"):
        shift = 3.0  # the scheduler's static shift (Sana: its `flow_shift`)
    elif case == "flux-dev":  # resolution-dependent: mu linear in the packed sequence length, (16/2)^2 = 64 tokens
        slope = (1.15 - 0.5) / (256 - 16)
        shift = math.exp(slope * 64 + 0.5 - slope * 16)
    else:
        shift = 1.0
    expected = (shift * u / (1 + (shift - 1) * u)).clamp(1e-3, 1)
    torch.testing.assert_close(levels.sigmas, expected)
    torch.testing.assert_close(levels.timesteps, expected * (1 if case.startswith("flux") else 1000))
    weights = {"sigma_sqrt": expected**-2.0, "cosmap": 2 / (math.pi * (1 - 2 * expected + 2 * expected**2))}
    torch.testing.assert_close(levels.weights, weights.get(scheme, torch.ones(512)))


def test_unsupported_pipelines_and_options_name_the_problem(pipelines, tmp_path):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    with pytest.raises(ValueError, match="prediction_type='epsilon' applies to UNet"):
        DiffusionDPOTrainer(
            pipelines["sd3"], args=_config(tmp_path, prediction_type="epsilon"), train_dataset=_pairs()
        )
    with pytest.raises(ValueError, match="resolution must be a multiple of 4 for this flux pipeline"):
        DiffusionDPOTrainer(pipelines["flux-dev"], args=_config(tmp_path, resolution=34), train_dataset=_pairs())
    pipe = diffusers.DiffusionPipeline.from_pretrained(pipelines["sd3"])
    pipe.transformer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"StableDiffusion3Pipeline with components .* and denoiser Linear"):
        DiffusionDPOTrainer(pipe, args=_config(tmp_path), train_dataset=_pairs())
    for kwargs, field in [({"weighting_scheme": "uniform"}, "weighting_scheme"), ({"flow_shift": 0.0}, "flow_shift"),
                          ({"logit_std": 0.0}, "logit_std"), ({"max_sequence_length": 0}, "max_sequence_length")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"DiffusionDPOConfig.{field}"):
            _config(tmp_path, **kwargs)


def _quantize_4bit(module):
    """What diffusers' bitsandbytes loader does on a GPU, by hand on the CPU (diffusers' loader needs CUDA): every
    nn.Linear becomes a bitsandbytes nf4 Linear4bit."""
    bnb = pytest.importorskip("bitsandbytes")
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                quantized = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=child.bias is not None,
                    compute_dtype=torch.float32, quant_type="nf4",
                )  # fmt: skip
                quantized.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
                quantized.bias = child.bias
                setattr(parent, name, quantized.to("cpu"))
    return module


@pytest.mark.parametrize("case", ["sd3", "flux-dev", "sana"])
def test_qlora_on_a_4bit_transformer(pipelines, tmp_path, case):
    from trl_extras.quantization import QLoRAConfig
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="requires a CUDA GPU"):
            DiffusionDPOTrainer(
                pipelines[case], args=_config(tmp_path), train_dataset=_pairs(2), quantization_config=QLoRAConfig()
            )
    pipe = diffusers.DiffusionPipeline.from_pretrained(pipelines[case])
    pipe.transformer = _quantize_4bit(pipe.transformer)
    trainer = DiffusionDPOTrainer(pipe, args=_config(tmp_path), train_dataset=_pairs(2), peft_config=_lora())
    before = _snapshot(trainer.model)
    trainer.train()
    changed = _changed(before, trainer.model)
    assert changed and all("lora_" in name for name in changed)
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
