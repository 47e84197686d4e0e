"""`DiffusionDPOTrainer`'s checkpoints and saved models in diffusers' formats: the denoiser in
``<dir>/unet/`` (or ``transformer/``), the whole pipeline for a model you save, LoRA as
``pytorch_lora_weights.safetensors`` that ``pipeline.load_lora_weights(dir)`` loads."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from .base import DiffusionFamily

__all__ = ["LORA_WEIGHTS_NAME", "load_denoiser", "load_lora_into", "save_denoiser", "save_frozen_components"]

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def save_denoiser(
    family: DiffusionFamily, denoiser: torch.nn.Module, output_dir: str, is_peft: bool, state_dict: dict | None
) -> None:
    """LoRA: the adapter weights (and config as metadata) in the family's ``load_lora_weights`` names. Full
    fine-tuning: ``denoiser.save_pretrained(<dir>/<denoiser>)``, or ``state_dict`` (gathered by DeepSpeed / FSDP)
    written as its safetensors file beside the config."""
    subfolder = family.denoiser_name
    os.makedirs(output_dir, exist_ok=True)
    if is_peft:
        lora_layers = family.lora_layers(denoiser, state_dict)
        family.save_lora_weights(output_dir, lora_layers, denoiser.peft_config["default"].to_dict())
    elif state_dict is None:
        denoiser.save_pretrained(os.path.join(output_dir, subfolder))
    else:
        import safetensors.torch

        denoiser.save_config(os.path.join(output_dir, subfolder))
        safetensors.torch.save_file(
            {key: value.contiguous() for key, value in state_dict.items()},
            os.path.join(output_dir, subfolder, "diffusion_pytorch_model.safetensors"),
        )


def save_frozen_components(pipeline: DiffusionPipeline, denoiser_name: str, output_dir: str) -> None:
    """The pipeline's config and every component but the denoiser, so ``output_dir`` with the denoiser saved beside
    them is a complete pipeline (``DiffusionPipeline.from_pretrained(output_dir)``)."""
    pipeline.save_config(output_dir)
    for name, component in pipeline.components.items():
        if name != denoiser_name and hasattr(component, "save_pretrained"):
            component.save_pretrained(os.path.join(output_dir, name))


def load_denoiser(family: DiffusionFamily, denoiser: torch.nn.Module, checkpoint: str, is_peft: bool) -> bool:
    """Load what `save_denoiser` wrote in ``checkpoint`` into ``denoiser``; False if it holds neither format (the
    caller then falls back to ``Trainer``'s loader)."""
    lora_file = os.path.join(checkpoint, LORA_WEIGHTS_NAME)
    denoiser_dir = os.path.join(checkpoint, family.denoiser_name)
    if is_peft and os.path.isfile(lora_file):
        load_lora_into(denoiser, lora_file, prefix=family.denoiser_name)
    elif not is_peft and os.path.isdir(denoiser_dir):
        saved = type(denoiser).from_pretrained(denoiser_dir, torch_dtype=denoiser.dtype)
        denoiser.load_state_dict(saved.state_dict())
    else:
        return False
    return True


def load_lora_into(denoiser: torch.nn.Module, lora_file: str, prefix: str = "unet") -> None:
    """Load a ``pytorch_lora_weights.safetensors`` written by `save_denoiser` into the denoiser's ``default`` adapter
    (keys ``<prefix>.<module>.lora_A.weight``, ``prefix`` ``"unet"`` or ``"transformer"``)."""
    import safetensors.torch
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state_dict = safetensors.torch.load_file(lora_file)
    state_dict = {
        key.removeprefix(f"{prefix}."): value for key, value in state_dict.items() if key.startswith(f"{prefix}.")
    }
    result = set_peft_model_state_dict(denoiser, convert_unet_state_dict_to_peft(state_dict), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(
            f"{lora_file} has LoRA weights this {prefix}'s adapter does not: {result.unexpected_keys[:5]}"
        )
