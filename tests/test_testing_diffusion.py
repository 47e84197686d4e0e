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


def test_every_tiny_pipeline_builder_is_public():
    import trl_extras
    import trl_extras.testing as testing
    from trl_extras import (  # noqa: F401
        build_tiny_diffusion_pipeline,
        build_tiny_flux_pipeline,
        build_tiny_sana_pipeline,
        build_tiny_sd3_pipeline,
    )

    for name in ["build_tiny_diffusion_pipeline", "build_tiny_sd3_pipeline", "build_tiny_flux_pipeline",
                 "build_tiny_sana_pipeline"]:  # fmt: skip
        assert name in testing.__all__ and name in trl_extras.__all__, name
        assert getattr(trl_extras, name) is getattr(testing, name), name


#: The linear VAE's colour -> latent map, written out: the first three columns of the 4 x 4 Hadamard matrix / 2.
HADAMARD_COLUMNS = 0.5 * torch.tensor([[1.0, 1, 1], [1, -1, 1], [1, 1, -1], [1, -1, -1]])  # (latent 4, rgb 3)


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_linear_vae_encodes_and_decodes_colours_linearly(tmp_path, family):
    """``vae="linear"``: encode = 2 x 2 average then ``A c``, decode = ``A^T z`` upsampled, as the pipeline loads
    it back; the denoiser and text encoders are those of the default build (same seed, same weights)."""
    import trl_extras.testing as testing

    builder = {
        "sd": "build_tiny_diffusion_pipeline",
        "sd3": "build_tiny_sd3_pipeline",
        "flux": "build_tiny_flux_pipeline",
    }
    build = getattr(testing, builder[family])
    pipe = diffusers.DiffusionPipeline.from_pretrained(build(tmp_path / "linear", vae="linear"))
    default = diffusers.DiffusionPipeline.from_pretrained(build(tmp_path / "random"))
    denoiser = "unet" if family == "sd" else "transformer"
    for name, value in getattr(default, denoiser).state_dict().items():
        assert torch.equal(value, getattr(pipe, denoiser).state_dict()[name]), name

    vae, generator = pipe.vae, torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1
    solid = (torch.rand(5, 3, 1, 1, generator=generator) * 2 - 1).expand(5, 3, 32, 32)
    latents = torch.randn(3, 4, 16, 16, generator=generator) * 2
    with torch.no_grad():
        posterior = vae.encode(torch.cat([pixels, solid])).latent_dist
        decoded_solid = vae.decode(posterior.mean[3:]).sample
        decoded = vae.decode(latents).sample
    averaged = torch.nn.functional.avg_pool2d(pixels, 2)
    torch.testing.assert_close(posterior.mean[:3], torch.einsum("lc,nchw->nlhw", HADAMARD_COLUMNS, averaged),
                               atol=1e-3, rtol=0)  # fmt: skip
    assert posterior.std.max() < 1e-6
    torch.testing.assert_close(decoded_solid, solid, atol=1e-3, rtol=0)  # solid colours round-trip
    expected = torch.einsum("lc,nlhw->nchw", HADAMARD_COLUMNS, latents).repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(decoded, expected, atol=1e-2, rtol=1e-3)
    # scaled latents of random colours have unit variance, as a trained VAE's scaling_factor gives
    shift = vae.config.shift_factor if family != "sd" else None
    assert (shift is None) == (family == "sd")
    scaled = (posterior.mean[3:] - (shift or 0.0)) * vae.config.scaling_factor
    assert 0.5 < scaled.std() < 2

    with pytest.raises(ValueError, match="vae must be 'random' or 'linear', got 'trained'"):
        build(tmp_path / "bad", vae="trained")
