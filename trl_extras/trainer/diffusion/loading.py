"""Loading a pipeline for `DiffusionDPOTrainer` and making its denoiser trainable: QLoRA settings, the 4-bit load,
LoRA or full fine-tuning with a frozen reference copy, and where each module lives (device, dtype)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from peft import LoraConfig

    from ..diffusion_dpo_config import DiffusionDPOConfig
    from .base import DiffusionFamily

__all__ = [
    "adapters_disabled",
    "frozen_dtype",
    "load_pipeline",
    "make_trainable",
    "move",
    "place_on_device",
    "resolve_qlora",
    "training_resolution",
]


def resolve_qlora(peft_config: LoraConfig | None, quantization_config: Any) -> tuple[LoraConfig | None, Any]:
    """A ``trl_extras.QLoRAConfig`` becomes a diffusers ``BitsAndBytesConfig`` plus (if none given) a LoRA config."""
    from ...quantization import QLoRAConfig

    if not isinstance(quantization_config, QLoRAConfig):
        return peft_config, quantization_config
    qlora = quantization_config
    if peft_config is None:
        from peft import LoraConfig

        targets = qlora.lora_target_modules
        peft_config = LoraConfig(
            r=qlora.lora_r,
            lora_alpha=qlora.lora_alpha,
            lora_dropout=qlora.lora_dropout,
            target_modules=None if targets == "all-linear" else targets,  # UNet: the attention projections
            init_lora_weights="gaussian",
        )
    if not qlora.load_in_4bit:
        return peft_config, None
    from diffusers import BitsAndBytesConfig

    return peft_config, BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qlora.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=qlora.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=qlora.compute_dtype,
    )


def load_pipeline(model: str | DiffusionPipeline, args: DiffusionDPOConfig, quantization_config) -> DiffusionPipeline:
    """``model`` loaded (a path or Hub id) or as given; with ``quantization_config`` the denoiser (``unet`` or
    ``transformer``) is loaded in 4 bit through diffusers' bitsandbytes quantizer (CUDA only)."""
    import diffusers
    from diffusers import DiffusionPipeline

    if not isinstance(model, str):
        if quantization_config is not None:
            raise ValueError(
                "`quantization_config` only applies when `model` is a path; a loaded pipeline is used as it is."
            )
        return model
    kwargs = dict(args.model_init_kwargs or {})
    index = DiffusionPipeline.load_config(model, **{k: v for k, v in kwargs.items() if k in ("revision",)})
    if "safety_checker" in index:  # SD 1.x ships an NSFW classifier the trainer never uses
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    if quantization_config is not None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "`quantization_config` (QLoRA) loads the denoiser in 4 bit through diffusers' bitsandbytes "
                "quantizer, which requires a CUDA GPU (diffusers raises 'No GPU found' on CPU). Train with LoRA "
                "only (`peft_config`) on this machine."
            )
        subfolder = "unet" if "unet" in index else "transformer"
        if subfolder not in index:
            raise ValueError(f"{model}/model_index.json names neither a `unet` nor a `transformer` to quantize.")
        denoiser_class = getattr(diffusers, index[subfolder][1])
        denoiser_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "variant", "torch_dtype")}
        kwargs[subfolder] = denoiser_class.from_pretrained(
            model, subfolder=subfolder, quantization_config=quantization_config, **denoiser_kwargs
        )
    from trl_extras._distributed import without_zero3_init

    with without_zero3_init():  # frozen text encoders and VAE stay whole; the engine partitions the denoiser it trains
        return DiffusionPipeline.from_pretrained(model, **kwargs)


def make_trainable(
    family: DiffusionFamily, peft_config: LoraConfig | None, args: DiffusionDPOConfig
) -> tuple[bool, torch.nn.Module | None]:
    """Freeze the VAE and text encoder(s); make the denoiser trainable, all of it or LoRA adapters only. Returns
    ``(is_peft, ref_model)``: with adapters the reference is the same network with them disabled (``None``);
    full fine-tuning keeps a frozen copy of the initial denoiser (none for the SFT baseline)."""
    denoiser, kind = family.denoiser, family.denoiser_name
    for module in family.frozen_modules():
        module.requires_grad_(False)
        module.eval()
    if peft_config is not None:
        if getattr(denoiser, "peft_config", None):
            raise ValueError(
                f"`peft_config` was given but the pipeline's {kind} already has adapters "
                f"({sorted(denoiser.peft_config)}): pass one or the other."
            )
        if peft_config.target_modules is None:
            peft_config = copy.copy(peft_config)
            peft_config.target_modules = list(family.default_lora_targets)
        denoiser.requires_grad_(False)
        denoiser.add_adapter(peft_config)
    is_peft = bool(getattr(denoiser, "peft_config", None))
    if is_peft:
        for name, parameter in denoiser.named_parameters():
            parameter.requires_grad_("lora_" in name)
    elif getattr(denoiser, "is_quantized", False):
        raise ValueError(f"A quantized {kind} can only be trained with LoRA adapters: pass `peft_config`.")
    else:
        denoiser.requires_grad_(True)
    ref_model = None
    if not is_peft and args.loss_type != "sft":
        ref_model = copy.deepcopy(denoiser).requires_grad_(False).eval()
    # transformers' Trainer switches checkpointing on through `model.activation_checkpointing_enable(...)`;
    # diffusers calls it `enable_gradient_checkpointing()`. Bridge the two names on this denoiser.
    denoiser.activation_checkpointing_enable = lambda *a, **k: denoiser.enable_gradient_checkpointing()
    return is_peft, ref_model


def frozen_dtype(args: DiffusionDPOConfig) -> torch.dtype:
    """The mixed-precision dtype the frozen modules (and LoRA's base weights) are kept in."""
    if args.bf16:
        return torch.bfloat16
    return torch.float16 if args.fp16 else torch.float32


def move(module: torch.nn.Module, device, dtype: torch.dtype) -> None:
    """``module.to(device, dtype)``, casting only when the dtype changes (diffusers warns about every cast)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def place_on_device(trainer) -> torch.nn.Module | None:
    """After ``Trainer.__init__``: frozen modules on the device in the mixed-precision dtype (SDXL's fp16-unsafe VAE
    in float32), LoRA's base weights too with the adapters in float32, and the reference copy moved, or prepared by
    DeepSpeed / FSDP as TRL prepares its reference models. Returns the reference copy (``None`` with LoRA)."""
    args, family, ref_model = trainer.args, trainer.family, trainer.ref_model
    device, dtype, denoiser = trainer.accelerator.device, frozen_dtype(args), family.denoiser
    for module in family.frozen_modules():
        move(module, device, dtype)
    if args.fp16 and getattr(family.pipeline.vae.config, "force_upcast", False):  # SDXL's VAE overflows in fp16
        move(family.pipeline.vae, device, torch.float32)
    if trainer.is_peft and not getattr(denoiser, "is_quantized", False):
        move(denoiser, device, dtype)
        for parameter in denoiser.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    if ref_model is None:
        return None
    if trainer.is_deepspeed_enabled:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(ref_model, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(ref_model, trainer.accelerator)
    move(ref_model, device, dtype)
    return ref_model


def training_resolution(family: DiffusionFamily, args: DiffusionDPOConfig) -> int:
    """``args.resolution``, or the family's native size; an error unless it is a multiple of what the VAE and the
    denoiser's patches divide by."""
    resolution = args.resolution or family.default_resolution()
    multiple = family.resolution_multiple()
    if resolution % multiple:
        raise ValueError(
            f"DiffusionDPOConfig.resolution must be a multiple of {multiple} for this {family.name} pipeline (the "
            f"VAE's downsampling factor times the {family.denoiser_name}'s patch size), got {resolution}."
        )
    return resolution


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module, denoiser: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` (the trained denoiser, possibly wrapped) with the LoRA adapters of ``denoiser`` (unwrapped) disabled
    for the duration: the reference of LoRA and QLoRA training."""
    denoiser.disable_adapters()
    try:
        yield model
    finally:
        denoiser.enable_adapters()
