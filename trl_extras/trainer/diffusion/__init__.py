"""Model-family adapters of `DiffusionDPOTrainer`: one small class per family (see `base.DiffusionFamily`).

| family | pipeline | denoiser | objective |
| --- | --- | --- | --- |
| `sd`, `sdxl` | `StableDiffusionPipeline`, `StableDiffusionXLPipeline` | `UNet2DConditionModel` | DDPM (eps / v / x0) |
| `sd3` | `StableDiffusion3Pipeline` (SD3, SD3.5) | `SD3Transformer2DModel` | flow matching |
| `flux` | `FluxPipeline` (Flux.1-dev, schnell) | `FluxTransformer2DModel` | flow matching |
| `sana` | `SanaPipeline` | `SanaTransformer2DModel` | flow matching |
"""

from __future__ import annotations

from .base import DiffusionFamily, NoiseLevels
from .flow_matching import (
    DEFAULT_SANA_LORA_TARGETS,
    DEFAULT_TRANSFORMER_LORA_TARGETS,
    FluxFamily,
    SanaFamily,
    SD3Family,
)
from .unet import DEFAULT_UNET_LORA_TARGETS, StableDiffusionFamily

__all__ = [
    "DEFAULT_SANA_LORA_TARGETS",
    "DEFAULT_TRANSFORMER_LORA_TARGETS",
    "DEFAULT_UNET_LORA_TARGETS",
    "FAMILIES",
    "DiffusionFamily",
    "FluxFamily",
    "NoiseLevels",
    "SD3Family",
    "SanaFamily",
    "StableDiffusionFamily",
    "family_for",
]

#: The adapters, tried in order by `family_for`.
FAMILIES: list[type[DiffusionFamily]] = [StableDiffusionFamily, SD3Family, FluxFamily, SanaFamily]


def family_for(pipeline, args) -> DiffusionFamily:
    """The adapter for ``pipeline``; a clear error naming the supported pipelines otherwise."""
    if getattr(pipeline, "vae", None) is not None:
        for family in FAMILIES:
            if family.matches(pipeline):
                return family(pipeline, args)
    components = sorted(name for name, value in pipeline.components.items() if value is not None)
    denoiser = next((type(pipeline.components[n]).__name__ for n in ("unet", "transformer") if n in components), None)
    raise ValueError(
        "DiffusionDPOTrainer trains text-to-image pipelines with a `vae` and one of: a UNet2DConditionModel `unet` "
        "(Stable Diffusion 1.x/2.x, SDXL), an SD3Transformer2DModel, FluxTransformer2DModel or "
        f"SanaTransformer2DModel `transformer` (SD3/SD3.5, Flux.1, Sana); got {type(pipeline).__name__} with components {components}"
        + (f" and denoiser {denoiser}." if denoiser else ".")
    )
