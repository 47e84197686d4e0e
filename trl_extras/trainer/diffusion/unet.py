"""UNet pipelines with DDPM training: Stable Diffusion 1.x/2.x (one CLIP encoder) and SDXL (two, pooled, micro-conditioning)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ...collators.diffusion import DiffusionPreferenceCollator
from ...losses.diffusion_dpo import denoising_target
from .base import DiffusionFamily, NoiseLevels

__all__ = ["DEFAULT_UNET_LORA_TARGETS", "StableDiffusionFamily"]

#: LoRA targets when ``peft_config.target_modules`` is None: the attention projections, as diffusers' LoRA scripts.
DEFAULT_UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class StableDiffusionFamily(DiffusionFamily):
    """SD 1.x/2.x and SDXL: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``t ~ U{0, ..., T-1}`` (a
    ``DDPMScheduler`` built from the pipeline's scheduler config); the target is ``eps``, the velocity or ``x_0``
    by the scheduler's ``prediction_type``. SDXL adds the pooled embedding of its second encoder and the size/crop
    ``time_ids``."""

    denoiser_name = "unet"
    default_lora_targets = DEFAULT_UNET_LORA_TARGETS

    def __init__(self, pipeline, args):
        from diffusers import DDPMScheduler

        super().__init__(pipeline, args)
        self.is_sdxl = getattr(pipeline.unet.config, "addition_embed_type", None) == "text_time"
        self.name = "sdxl" if self.is_sdxl else "sd"
        if self.is_sdxl and getattr(pipeline, "text_encoder_2", None) is None:
            raise ValueError("This SDXL-style UNet needs the pipeline's `text_encoder_2` (pooled text embeddings).")
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        if args.prediction_type is not None:
            self.noise_scheduler.register_to_config(prediction_type=args.prediction_type)
            pipeline.scheduler.register_to_config(prediction_type=args.prediction_type)

    @classmethod
    def matches(cls, pipeline) -> bool:
        return getattr(pipeline, "unet", None) is not None

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def frozen_modules(self) -> list[torch.nn.Module]:
        names = ["vae", "text_encoder"] + (["text_encoder_2"] if self.is_sdxl else [])
        return [getattr(self.pipeline, name) for name in names]

    def default_resolution(self) -> int:
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    def make_collator(self, resolution: int) -> DiffusionPreferenceCollator:
        return DiffusionPreferenceCollator(
            tokenizer=self.pipeline.tokenizer,
            tokenizer_2=getattr(self.pipeline, "tokenizer_2", None) if self.is_sdxl else None,
            resolution=resolution,
            center_crop=self.args.center_crop,
            random_flip=self.args.random_flip,
            loss_type=self.args.loss_type,
        )

    def encode_conditioning(self, batch, sides, resolution, device) -> dict[str, torch.Tensor]:
        """``prompt_embeds`` ``(B, L, D)`` (SDXL: both encoders' penultimate layers side by side); SDXL also
        ``pooled_prompt_embeds`` ``(B, D2)`` and ``{side}_time_ids`` ``(B, 6)`` (original size, crop top-left,
        target size)."""
        pipeline, encoded = self.pipeline, {}
        input_ids = batch["input_ids"].to(device)
        if not self.is_sdxl:
            encoded["prompt_embeds"] = pipeline.text_encoder(input_ids)[0].float()
            return encoded
        for side in sides:
            target = torch.tensor([resolution, resolution]).expand(len(input_ids), 2)
            time_ids = [batch[f"{side}_original_sizes"], batch[f"{side}_crop_top_lefts"], target]
            encoded[f"{side}_time_ids"] = torch.cat([t.to(device) for t in time_ids], dim=1).float()
        first = pipeline.text_encoder(input_ids, output_hidden_states=True)
        second = pipeline.text_encoder_2(batch["input_ids_2"].to(device), output_hidden_states=True)
        encoded["prompt_embeds"] = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1).float()
        encoded["pooled_prompt_embeds"] = second.text_embeds.float()
        return encoded

    def lora_layers(self, denoiser, state_dict=None):
        """PEFT's weights in diffusers' UNet LoRA names (``lora.down``/``lora.up``), as its UNet scripts save them."""
        from diffusers.utils import convert_state_dict_to_diffusers

        return convert_state_dict_to_diffusers(super().lora_layers(denoiser, state_dict))

    def sample_noise_levels(self, num_pairs, draw, latent_shape) -> NoiseLevels:
        num_timesteps = self.noise_scheduler.config.num_train_timesteps
        return NoiseLevels(timesteps=draw(partial(torch.randint, 0, num_timesteps), (num_pairs,)))

    def add_noise(self, latents, noise, levels):
        return self.noise_scheduler.add_noise(latents, noise, levels.timesteps)

    def target(self, latents, noise, levels):
        return denoising_target(self.prediction_type, latents, noise, levels.timesteps, self.noise_scheduler)

    def predict(self, model, noisy_latents, levels, inputs, sides) -> torch.Tensor:
        conditioning: dict[str, Any] = {"encoder_hidden_states": inputs["prompt_embeds"].repeat(len(sides), 1, 1)}
        if self.is_sdxl:
            conditioning["added_cond_kwargs"] = {
                "text_embeds": inputs["pooled_prompt_embeds"].repeat(len(sides), 1),
                "time_ids": torch.cat([inputs[f"{side}_time_ids"] for side in sides]),
            }
        return model(noisy_latents, levels.timesteps, **conditioning, return_dict=False)[0]
