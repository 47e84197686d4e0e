"""From collated images and captions to `DiffusionDPOTrainer`'s denoising problem: the VAE latents and text
conditioning of a batch (what ``cache_latents`` stores), the latent cache itself, and the per-step draws."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .base import NoiseLevels

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from .base import DiffusionFamily

__all__ = [
    "CACHED_COLUMNS",
    "DATA_COLUMNS",
    "NoisedLatents",
    "cache_dataset",
    "draw_for_process",
    "encode_batch",
    "latents",
    "partial_draw",
]

#: Columns the trainer reads: raw image pairs, or what `cache_latents` stores instead.
DATA_COLUMNS = ["caption", "chosen", "rejected"]
CACHED_COLUMNS = [
    "chosen_latent_dist",
    "rejected_latent_dist",
    "prompt_embeds",
    "pooled_prompt_embeds",
    "chosen_time_ids",
    "rejected_time_ids",
    "prompt_attention_mask",
]


@dataclass
class NoisedLatents:
    """One training step's denoising problem, ``N = len(sides) * B`` rows ``[chosen; rejected]``; rows ``i`` and
    ``B + i`` (the two images of pair ``i``) share ``noise`` and ``levels``."""

    latents: torch.Tensor  # (N, C, h, w) clean latents x_0, shifted and scaled as the denoiser expects
    noise: torch.Tensor  # (N, C, h, w) eps
    levels: NoiseLevels  # (N,) timesteps, and for flow matching sigmas and loss weights
    noisy_latents: torch.Tensor  # (N, C, h, w) the denoiser's input
    target: torch.Tensor  # (N, C, h, w) what it should predict (eps, v, x_0, or the velocity eps - x_0)


def partial_draw(draw, generator):
    """``draw(sample, shape, generator)``, generator bound, as `DiffusionFamily.sample_noise_levels` takes it."""
    return lambda sample, shape: draw(sample, shape, generator)


def draw_for_process(
    accelerator: Accelerator, sample: Callable, shape: tuple[int, ...], generator: torch.Generator | None
) -> torch.Tensor:
    """``sample(shape)`` for this process. transformers seeds every process alike, so all processes draw one block
    for all of them (their RNG streams stay in step) and each keeps its own slice: no two processes share noise or
    timesteps."""
    processes, rank = accelerator.num_processes, accelerator.process_index
    device = accelerator.device if generator is None else generator.device
    block = sample((processes * shape[0], *shape[1:]), generator=generator, device=device)
    return block[rank * shape[0] : (rank + 1) * shape[0]].to(accelerator.device)


@torch.no_grad()
def encode_batch(
    family: DiffusionFamily, batch: dict[str, Any], sides: tuple[str, ...], resolution: int, accelerator: Accelerator
) -> dict[str, torch.Tensor]:
    """Collator output -> what the denoising step needs (and what ``cache_latents`` stores), per pair:

    - ``{side}_latent_dist``: ``(B, 2C, h, w)`` the VAE posterior's mean and log-variance (unscaled), or Sana's
      deterministic DC-AE latent ``(B, C, h, w)`` (`DiffusionFamily.encode_images`);
    - the family's text conditioning (`DiffusionFamily.encode_conditioning`): ``prompt_embeds`` ``(B, L, D)``;
      SDXL, SD3 and Flux also ``pooled_prompt_embeds`` ``(B, D2)``; SDXL ``{side}_time_ids`` ``(B, 6)``; Sana
      ``prompt_attention_mask`` ``(B, L)``.
    """
    device, vae = accelerator.device, family.pipeline.vae
    encoded = {}
    with accelerator.autocast():
        for side in sides:
            pixels = batch[f"{side}_pixel_values"].to(device, dtype=vae.dtype)
            encoded[f"{side}_latent_dist"] = family.encode_images(pixels)
        encoded.update(family.encode_conditioning(batch, sides, resolution, device))
    return encoded


def latents(family: DiffusionFamily, inputs: dict[str, Any], side: str, generator: torch.Generator | None):
    """The ``side`` latents ``(B, C, h, w)`` of a batch: drawn from its VAE posterior (`encode_batch`'s
    ``{side}_latent_dist``), or for online pairs the sampled latents themselves (``{side}_latents``)."""
    if f"{side}_latents" in inputs:
        return inputs[f"{side}_latents"]
    return family.sample_latents(inputs[f"{side}_latent_dist"], generator)


def cache_dataset(
    dataset: Dataset | dict[str, Dataset] | None,
    encode: Callable[[list[dict]], dict[str, torch.Tensor]],
    batch_size: int,
    name: str,
) -> Dataset | dict[str, Dataset] | None:
    """``cache_latents``: ``dataset`` (each split of a dict) mapped once through ``encode`` (the image collator, then
    `encode_batch`), in batches of ``batch_size`` rows, as torch tensors."""
    if isinstance(dataset, dict):
        return {key: cache_dataset(split, encode, batch_size, f"{name} {key}") for key, split in dataset.items()}
    if dataset is None:
        return None

    def encode_rows(rows: dict[str, list]) -> dict[str, Any]:
        features = [dict(zip(rows, values)) for values in zip(*rows.values())]
        return {key: value.cpu().numpy() for key, value in encode(features).items()}

    return dataset.map(
        encode_rows,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        new_fingerprint=uuid.uuid4().hex,  # the encoders are not hashable; never reuse a stale cache
        desc=f"Caching VAE latents and text embeddings ({name})",
    ).with_format("torch")
