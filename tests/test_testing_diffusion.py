"""The offline tiny text-to-image pipelines: they load through diffusers' real `from_pretrained` and generate."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_tiny_pipeline_loads_and_generates(tmp_path, sdxl):
    from trl_extras.testing import build_tiny_diffusion_pipeline

    path = build_tiny_diffusion_pipeline(tmp_path, sdxl=sdxl)
    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    expected = diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
    assert type(pipe) is expected
    image = pipe("a red square", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32) and image.mode == "RGB"

    # the parts the trainer relies on
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 16
    assert isinstance(pipe.scheduler, diffusers.DDPMScheduler)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    if sdxl:
        assert pipe.unet.config.addition_embed_type == "text_time"
        assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
        assert pipe.unet.config.cross_attention_dim == 64  # both encoders' hidden states side by side
    else:
        assert pipe.safety_checker is None


def test_tiny_pipeline_is_seeded_and_has_a_realistic_vae(tmp_path):
    from trl_extras.testing import build_tiny_diffusion_pipeline

    first = diffusers.DiffusionPipeline.from_pretrained(build_tiny_diffusion_pipeline(tmp_path / "a", seed=3))
    second = diffusers.DiffusionPipeline.from_pretrained(build_tiny_diffusion_pipeline(tmp_path / "b", seed=3))
    other = diffusers.DiffusionPipeline.from_pretrained(build_tiny_diffusion_pipeline(tmp_path / "c", seed=4))
    for name, value in first.unet.state_dict().items():
        assert torch.equal(value, second.unet.state_dict()[name]), name
    assert not torch.equal(first.unet.conv_in.weight, other.unet.conv_in.weight)

    # like a trained VAE: a nearly deterministic posterior and unit-variance scaled latents, so images that differ
    # differ in latent space by much more than the posterior noise
    vae = first.vae
    red, blue = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    with torch.no_grad():
        posterior_red, posterior_blue = vae.encode(red * 2 - 1).latent_dist, vae.encode(blue * 2 - 1).latent_dist
    scale = vae.config.scaling_factor
    gap = (posterior_red.mean - posterior_blue.mean).abs().mean() * scale
    assert (posterior_red.std * scale).max() < 0.05 < 0.3 < gap


def test_tiny_tokenizer_and_v_prediction(tmp_path):
    from transformers import CLIPTokenizer

    from trl_extras.testing import build_tiny_diffusion_pipeline

    path = build_tiny_diffusion_pipeline(tmp_path, prediction_type="v_prediction")
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    ids = tokenizer("A red square, 2x!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.model_max_length == 77
    assert tokenizer.unk_token_id not in ids[1:-1]  # byte-level: every character has a token (unk is eos)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red square , 2 x !"  # CLIP lower-cases and splits
    scheduler = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        build_tiny_diffusion_pipeline(tmp_path / "bad", prediction_type="flow")


@pytest.mark.parametrize("layout", ["sd3", "flux-dev", "flux-schnell", "sana"])
def test_tiny_flow_matching_pipelines_load_and_generate(tmp_path, layout):
    from transformers import T5Tokenizer

    from trl_extras.testing import build_tiny_flux_pipeline, build_tiny_sana_pipeline, build_tiny_sd3_pipeline

    if layout == "sana":
        _check_tiny_sana(build_tiny_sana_pipeline(tmp_path))
        return
    if layout == "sd3":
        path = build_tiny_sd3_pipeline(tmp_path)
    else:
        path = build_tiny_flux_pipeline(tmp_path, layout=layout.split("-")[1])
    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    expected = diffusers.StableDiffusion3Pipeline if layout == "sd3" else diffusers.FluxPipeline
    assert type(pipe) is expected
    assert isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    assert pipe.vae.config.shift_factor is not None and pipe.vae_scale_factor == 2
    image = pipe(
        "a red square", num_inference_steps=2, height=32, width=32, max_sequence_length=8,
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    assert image.size == (32, 32) and image.mode == "RGB"

    t5 = pipe.tokenizer_3 if layout == "sd3" else pipe.tokenizer_2
    assert isinstance(t5, T5Tokenizer)
    ids = t5("A red square, 2x!").input_ids
    assert ids[-1] == t5.eos_token_id and t5.unk_token_id not in ids and t5.pad_token_id == 0
    assert "\u2581red" in t5.convert_ids_to_tokens(ids)  # whole words are single pieces
    if layout == "sd3":
        assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel"
        assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder_3.config.d_model
        assert pipe.transformer.config.pooled_projection_dim == 2 * pipe.text_encoder.config.projection_dim
        assert pipe.scheduler.config.shift == 3.0
    else:
        assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels  # packed 2 x 2 patches
        assert pipe.transformer.config.guidance_embeds == (layout == "flux-dev")
        assert pipe.scheduler.config.use_dynamic_shifting == (layout == "flux-dev")
    with pytest.raises(ValueError, match="layout"):
        build_tiny_flux_pipeline(tmp_path / "bad", layout="pro")


def _check_tiny_sana(path):
    from transformers import GemmaTokenizer

    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    assert type(pipe) is diffusers.SanaPipeline and type(pipe.vae) is diffusers.AutoencoderDC
    assert type(pipe.text_encoder).__name__ == "Gemma2Model" and isinstance(pipe.tokenizer, GemmaTokenizer)
    assert pipe.scheduler.config.flow_shift == 3.0 and pipe.scheduler.config.prediction_type == "flow_prediction"
    image = pipe(
        "a red square", num_inference_steps=2, height=32, width=32, max_sequence_length=8,
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    assert image.size == (32, 32)
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("A red square, 2x!").input_ids)
    assert "\u2581red" in tokens and "\u2581square" in tokens and "<unk>" not in tokens
    with torch.no_grad():  # unit-variance scaled latents, as the trained DC-AE's scaling_factor gives
        latents = pipe.vae.encode(torch.rand(8, 3, 32, 32) * 2 - 1).latent * pipe.vae.config.scaling_factor
    assert latents.shape == (8, 4, 16, 16) and 0.5 < latents.std() < 2
