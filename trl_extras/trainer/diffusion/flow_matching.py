"""Flow-matching diffusion transformers: Stable Diffusion 3/3.5, Flux.1 (dev and schnell layouts) and Sana."""

from __future__ import annotations

import math

import torch

from ...losses.diffusion_dpo import flow_matching_noisy_latents, flow_matching_target, shift_sigmas
from .base import DiffusionFamily, NoiseLevels

__all__ = ["DEFAULT_SANA_LORA_TARGETS", "DEFAULT_TRANSFORMER_LORA_TARGETS", "FluxFamily", "SD3Family", "SanaFamily"]

#: LoRA targets when ``peft_config.target_modules`` is None: the image and text attention projections of the joint
#: (MM-DiT) blocks, as diffusers' SD3 and Flux LoRA scripts.
DEFAULT_TRANSFORMER_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
]  # fmt: skip


#: Sana's linear self-attention and cross-attention projections (diffusers' Sana LoRA script's targets).
DEFAULT_SANA_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class FlowMatchingFamily(DiffusionFamily):
    """The rectified-flow step shared by SD3 and Flux (see `trl_extras.losses.diffusion_dpo`).

    Noise levels: ``u`` from diffusers' `compute_density_for_timestep_sampling` (``args.weighting_scheme``:
    logit-normal with ``logit_mean``/``logit_std``, SD3's "mode" density with ``mode_scale``, or uniform for the
    "sigma_sqrt", "cosmap" and "none" schemes), then shifted: ``sigma = s u / (1 + (s - 1) u)`` with ``s =
    args.flow_shift`` if set, else the family's shift (`default_shift`). Per-sample loss weights come from diffusers'
    `compute_loss_weighting_for_sd3`. ``x_sigma = (1 - sigma) x_0 + sigma eps``; target ``eps - x_0``.
    """

    default_lora_targets = DEFAULT_TRANSFORMER_LORA_TARGETS
    #: The denoiser's patch side in latent pixels (SD3's ``patch_size``; Flux packs 2 x 2 patches).
    patch_size = 2

    def __init__(self, pipeline, args):
        super().__init__(pipeline, args)
        if args.prediction_type is not None:
            raise ValueError(
                f"DiffusionDPOConfig.prediction_type={args.prediction_type!r} applies to UNet (DDPM) pipelines; "
                f"{type(pipeline).__name__} is trained with flow matching (velocity targets). Leave it None."
            )
        self.scheduler_config = pipeline.scheduler.config

    @property
    def prediction_type(self) -> str:
        return "flow_matching"

    def resolution_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * self.patch_size

    def default_shift(self, latent_shape: tuple[int, ...]) -> float:
        """The scheduler's static ``shift`` (SD3: 3.0)."""
        return float(self.scheduler_config.get("shift", 1.0))

    def sample_noise_levels(self, num_pairs, draw, latent_shape) -> NoiseLevels:
        from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

        args = self.args

        def density(shape, generator=None, device=None):
            return compute_density_for_timestep_sampling(
                args.weighting_scheme, shape[0], logit_mean=args.logit_mean, logit_std=args.logit_std,
                mode_scale=args.mode_scale, device=device, generator=generator,
            )  # fmt: skip

        u = draw(density, (num_pairs,))
        shift = args.flow_shift if args.flow_shift is not None else self.default_shift(latent_shape)
        num_timesteps = self.scheduler_config.get("num_train_timesteps", 1000)
        sigmas = shift_sigmas(u, shift).clamp(1.0 / num_timesteps, 1.0)  # sigma = 0 is no training signal
        weights = compute_loss_weighting_for_sd3(args.weighting_scheme, sigmas)
        return NoiseLevels(timesteps=self.timesteps_for(sigmas), sigmas=sigmas, weights=weights)

    def timesteps_for(self, sigmas: torch.Tensor) -> torch.Tensor:
        """What the transformer takes as ``timestep``: ``1000 sigma`` (SD3; Flux overrides)."""
        return sigmas * self.scheduler_config.get("num_train_timesteps", 1000)

    def add_noise(self, latents, noise, levels):
        return flow_matching_noisy_latents(latents, noise, levels.sigmas)

    def target(self, latents, noise, levels):
        return flow_matching_target(latents, noise)

    def sample_kwargs(self):
        if self.args.max_sequence_length is None:
            return {}
        return {"max_sequence_length": self.args.max_sequence_length}


class SD3Family(FlowMatchingFamily):
    """Stable Diffusion 3 / 3.5: `SD3Transformer2DModel`; prompts through the pipeline's own `encode_prompt` (CLIP-L
    and CLIP-G penultimate states, zero-padded to T5's width, followed by T5's states; pooled CLIP projections side
    by side as ``pooled_projections``); ``timestep = 1000 sigma``; the scheduler's static shift (3.0)."""

    name = "sd3"

    @classmethod
    def matches(cls, pipeline) -> bool:
        transformer = getattr(pipeline, "transformer", None)
        return type(transformer).__name__ == "SD3Transformer2DModel"

    def default_resolution(self) -> int:
        return self.pipeline.transformer.config.sample_size * self.pipeline.vae_scale_factor

    def resolution_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * self.pipeline.transformer.config.patch_size

    def encode_conditioning(self, batch, sides, resolution, device):
        captions = list(batch["caption"])
        prompt_embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=captions, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False,
            **self.sample_kwargs(),
        )  # fmt: skip
        return {"prompt_embeds": prompt_embeds.float(), "pooled_prompt_embeds": pooled.float()}

    def predict(self, model, noisy_latents, levels, inputs, sides):
        return model(
            hidden_states=noisy_latents,
            timestep=levels.timesteps,
            encoder_hidden_states=inputs["prompt_embeds"].repeat(len(sides), 1, 1),
            pooled_projections=inputs["pooled_prompt_embeds"].repeat(len(sides), 1),
            return_dict=False,
        )[0]


class FluxFamily(FlowMatchingFamily):
    """Flux.1: `FluxTransformer2DModel` over packed latents (each 2 x 2 latent patch one token, with the pipeline's
    positional ids); prompts through the pipeline's `encode_prompt` (T5 states as text tokens, CLIP's pooled output
    as ``pooled_projections``); ``timestep = sigma``; ``guidance = args.guidance_scale`` when the transformer has a
    guidance embedding (Flux.1-dev; schnell has none). The shift is resolution-dependent where the scheduler says so
    (``use_dynamic_shifting``, Flux.1-dev): ``s = exp(mu)`` with diffusers' `calculate_shift` of the packed sequence
    length, as the pipeline samples at that resolution; otherwise the scheduler's static shift (schnell: 1)."""

    name = "flux"

    @classmethod
    def matches(cls, pipeline) -> bool:
        transformer = getattr(pipeline, "transformer", None)
        return type(transformer).__name__ == "FluxTransformer2DModel"

    def default_resolution(self) -> int:
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    def default_shift(self, latent_shape):
        if not self.scheduler_config.get("use_dynamic_shifting", False):
            return super().default_shift(latent_shape)
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler_config
        image_seq_len = (latent_shape[-2] // 2) * (latent_shape[-1] // 2)
        mu = calculate_shift(
            image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )  # fmt: skip
        return math.exp(mu)

    def timesteps_for(self, sigmas):
        return sigmas  # FluxTransformer2DModel multiplies by 1000 itself

    def generated_latents(self, output, resolution):
        from diffusers import FluxPipeline

        return FluxPipeline._unpack_latents(output, resolution, resolution, self.pipeline.vae_scale_factor)

    def encode_conditioning(self, batch, sides, resolution, device):
        captions = list(batch["caption"])
        prompt_embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=captions, prompt_2=None, device=device, **self.sample_kwargs()
        )
        return {"prompt_embeds": prompt_embeds.float(), "pooled_prompt_embeds": pooled.float()}

    def predict(self, model, noisy_latents, levels, inputs, sides):
        from diffusers import FluxPipeline

        rows, channels, height, width = noisy_latents.shape
        packed = FluxPipeline._pack_latents(noisy_latents, rows, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(
            rows, height // 2, width // 2, noisy_latents.device, noisy_latents.dtype
        )
        prompt_embeds = inputs["prompt_embeds"].repeat(len(sides), 1, 1)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=noisy_latents.device, dtype=noisy_latents.dtype)
        guidance = None
        if self.pipeline.transformer.config.guidance_embeds:
            guidance = torch.full((rows,), self.args.guidance_scale, device=noisy_latents.device)
        prediction = model(
            hidden_states=packed,
            timestep=levels.timesteps,
            guidance=guidance,
            pooled_projections=inputs["pooled_prompt_embeds"].repeat(len(sides), 1),
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        scale = self.pipeline.vae_scale_factor
        return FluxPipeline._unpack_latents(prediction, height * scale, width * scale, scale)


class SanaFamily(FlowMatchingFamily):
    """Sana: `SanaTransformer2DModel` (linear attention, patch size 1) on the deterministic DC-AE latents
    (``latent * scaling_factor``, no sampling); prompts through the pipeline's `encode_prompt` (Gemma-2 hidden
    states and their attention mask, which the transformer's cross-attention takes; no complex human instruction,
    as diffusers' Sana LoRA script trains); ``timestep = 1000 sigma * timestep_scale``; the scheduler's
    ``flow_shift`` (Sana 1024 px: 3.0)."""

    name = "sana"
    default_lora_targets = DEFAULT_SANA_LORA_TARGETS

    @classmethod
    def matches(cls, pipeline) -> bool:
        transformer = getattr(pipeline, "transformer", None)
        return type(transformer).__name__ == "SanaTransformer2DModel"

    def default_resolution(self) -> int:
        return self.pipeline.transformer.config.sample_size * self.pipeline.vae_scale_factor

    def resolution_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * self.pipeline.transformer.config.patch_size

    def default_shift(self, latent_shape):
        return float(self.scheduler_config.get("flow_shift", None) or 1.0)

    def encode_images(self, pixels):
        return self.pipeline.vae.encode(pixels).latent.float()

    def sample_latents(self, encoded, generator):
        return encoded.float() * self.pipeline.vae.config.scaling_factor

    def timesteps_for(self, sigmas):
        return super().timesteps_for(sigmas) * self.pipeline.transformer.config.timestep_scale

    def encode_conditioning(self, batch, sides, resolution, device):
        prompt_embeds, mask, _, _ = self.pipeline.encode_prompt(
            list(batch["caption"]), do_classifier_free_guidance=False, device=device, **self.sample_kwargs()
        )
        return {"prompt_embeds": prompt_embeds.float(), "prompt_attention_mask": mask}

    def predict(self, model, noisy_latents, levels, inputs, sides):
        return model(
            noisy_latents,
            encoder_hidden_states=inputs["prompt_embeds"].repeat(len(sides), 1, 1),
            encoder_attention_mask=inputs["prompt_attention_mask"].repeat(len(sides), 1),
            timestep=levels.timesteps,
            return_dict=False,
        )[0]
