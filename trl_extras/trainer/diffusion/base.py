"""What every model family tells `DiffusionDPOTrainer`: the contract of a family adapter."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ...collators.diffusion import DiffusionPreferenceCollator
    from ..diffusion_dpo_config import DiffusionDPOConfig

__all__ = ["DiffusionFamily", "NoiseLevels"]


@dataclass
class NoiseLevels:
    """The noise levels of one step, one per pair (``B`` rows); the trainer repeats them for the ``[chosen;
    rejected]`` rows, so both images of a pair share them."""

    timesteps: (
        torch.Tensor
    )  # (B,) the timestep the denoiser is given (DDPM index, or 1000 sigma for SD3, sigma for Flux)
    sigmas: torch.Tensor | None = None  # (B,) flow matching: the noise level sigma in (0, 1]; None for DDPM
    weights: torch.Tensor | None = None  # (B,) per-sample loss weights (SD3's weighting schemes); None means 1

    def repeat(self, times: int) -> NoiseLevels:
        return NoiseLevels(*(None if value is None else value.repeat(times) for value in self._values()))

    def _values(self):
        return self.timesteps, self.sigmas, self.weights


class DiffusionFamily:
    """One text-to-image model family (SD 1.x/2.x, SDXL, SD3, Flux) as `DiffusionDPOTrainer` sees it.

    An adapter says how the family encodes prompts, adds noise, forms the target, calls its denoiser and saves LoRA
    weights; the trainer holds the Diffusion-DPO maths and the `Trainer` wiring. Subclasses set the class attributes
    and implement the five methods that raise `NotImplementedError`.

    Batch conventions: ``B`` pairs; latents are ``(N, C, h, w)`` with ``N = len(sides) * B`` rows ``[chosen;
    rejected]``; what `encode_conditioning` returns is per pair (``B`` rows) and `predict` repeats it.
    """

    #: Short name, as in `DiffusionDPOTrainer.family.name` and the CLI's log line.
    name: ClassVar[str]
    #: The pipeline component that trains: "unet" or "transformer" (also the LoRA key prefix and save subfolder).
    denoiser_name: ClassVar[str] = "transformer"
    #: LoRA targets when ``peft_config.target_modules`` is None.
    default_lora_targets: ClassVar[list[str]]

    def __init__(self, pipeline: DiffusionPipeline, args: DiffusionDPOConfig):
        self.pipeline = pipeline
        self.args = args

    @classmethod
    def matches(cls, pipeline: DiffusionPipeline) -> bool:
        """Whether this adapter handles ``pipeline``."""
        raise NotImplementedError

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def prediction_type(self) -> str:
        """What the denoiser predicts: "epsilon", "v_prediction", "sample" or "flow_matching" (velocity)."""
        raise NotImplementedError

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The VAE and text encoder(s): every module of the pipeline but the denoiser."""
        return [
            component
            for name, component in self.pipeline.components.items()
            if name != self.denoiser_name and isinstance(component, torch.nn.Module)
        ]

    # ------------------------------------------------------------------ images and prompts

    def default_resolution(self) -> int:
        """The side of the square training images when ``args.resolution`` is None: the model's native size."""
        raise NotImplementedError

    def resolution_multiple(self) -> int:
        """Training resolutions must be a multiple of this (VAE downsampling times the denoiser's patch size)."""
        return self.pipeline.vae_scale_factor

    def make_collator(self, resolution: int) -> DiffusionPreferenceCollator:
        """The default collator. Transformer families keep captions as strings for the pipeline's `encode_prompt`."""
        from ...collators.diffusion import DiffusionPreferenceCollator

        return DiffusionPreferenceCollator(
            tokenizer=None,
            resolution=resolution,
            center_crop=self.args.center_crop,
            random_flip=self.args.random_flip,
            loss_type=self.args.loss_type,
        )

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` in ``[-1, 1]`` -> what `sample_latents` draws from (and `cache_latents` stores):
        the ``AutoencoderKL`` posterior's mean and log-variance ``(B, 2C, h, w)``, unscaled."""
        return self.pipeline.vae.encode(pixels).latent_dist.parameters.float()

    def sample_latents(self, encoded: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A latent from `encode_images`' output, shifted and scaled as the denoiser expects: ``(z - shift_factor) *
        scaling_factor`` with ``z`` drawn from the posterior. ``(B, 2C, h, w) -> (B, C, h, w)``"""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        config = self.pipeline.vae.config
        latents = DiagonalGaussianDistribution(encoded.float()).sample(generator=generator)
        if getattr(config, "shift_factor", None) is not None:
            latents = latents - config.shift_factor
        return latents * config.scaling_factor

    def generated_latents(self, output: torch.Tensor, resolution: int) -> torch.Tensor:
        """The pipeline's ``output_type="latent"`` output -> latents ``(N, C, h, w)`` in the denoiser's space."""
        return output

    def decode_latents(self, latents: torch.Tensor) -> list:
        """Latents in the denoiser's space ``(N, C, h, w)`` -> PIL images, as the pipeline decodes them."""
        vae = self.pipeline.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None:
            latents = latents + vae.config.shift_factor
        images = vae.decode(latents, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(images, output_type="pil")

    def encode_conditioning(
        self, batch: dict[str, Any], sides: tuple[str, ...], resolution: int, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Collator output -> the denoiser's text conditioning per pair (float32; what `cache_latents` stores):
        ``prompt_embeds`` ``(B, L, D)``, and ``pooled_prompt_embeds`` ``(B, D2)`` where the family has one."""
        raise NotImplementedError

    def sample_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the pipeline call that renders sample images."""
        return {}

    # ------------------------------------------------------------------ the denoising step

    def sample_noise_levels(self, num_pairs: int, draw, latent_shape: tuple[int, ...]) -> NoiseLevels:
        """One noise level per pair. ``draw(sample, shape)`` calls ``sample(shape, generator=..., device=...)`` for
        this process (the trainer's `_draw`: all processes draw one block and each keeps its slice)."""
        raise NotImplementedError

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, levels: NoiseLevels) -> torch.Tensor:
        raise NotImplementedError

    def target(self, latents: torch.Tensor, noise: torch.Tensor, levels: NoiseLevels) -> torch.Tensor:
        raise NotImplementedError

    def predict(
        self, model, noisy_latents: torch.Tensor, levels: NoiseLevels, inputs: dict[str, torch.Tensor], sides
    ) -> torch.Tensor:
        """The denoiser's output for ``noisy_latents`` ``(N, C, h, w)``, in the same layout. ``model`` is the
        trained denoiser (possibly wrapped by accelerate) or the reference."""
        raise NotImplementedError

    # ------------------------------------------------------------------ saving

    def lora_layers(self, denoiser: torch.nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
        """The adapter weights to save, keyed as the family's ``load_lora_weights`` reads them (transformers:
        PEFT's own names, as diffusers' SD3/Flux LoRA scripts save them)."""
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(denoiser, state_dict=state_dict)

    def save_lora_weights(self, output_dir: str | os.PathLike, lora_layers: dict, metadata: dict) -> None:
        """Write ``pytorch_lora_weights.safetensors`` that ``pipeline.load_lora_weights(output_dir)`` loads."""
        type(self.pipeline).save_lora_weights(
            output_dir,
            **{
                f"{self.denoiser_name}_lora_layers": lora_layers,
                f"{self.denoiser_name}_lora_adapter_metadata": metadata,
            },
        )
