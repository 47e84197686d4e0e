"""The QLoRA switch: one way to load any model 4-bit (bitsandbytes nf4) with LoRA adapters on top.

Used by every trainer in trl-extras and usable with TRL's stock trainers: the returned ``PeftModel`` goes to the
trainer as ``model=``. TRL's DPO/GRPO/RLOO trainers, and ours, then take the reference model from the same network with
the adapter disabled (``with model.disable_adapter():``) instead of loading a second copy.

```python
from trl import DPOConfig, DPOTrainer
from trl_extras import QLoRAConfig, load_qlora_model
from trl_extras.quantization import keep_4bit_training_exact

model = load_qlora_model("Qwen/Qwen2.5-0.5B-Instruct", QLoRAConfig(lora_r=16))
trainer = DPOTrainer(model=model, args=DPOConfig(...), train_dataset=dataset)  # ref = disabled adapter
keep_4bit_training_exact(trainer.model)  # a stock trainer: see below (our trainers and the CLI do this themselves)
trainer.train()
trainer.save_model("out")
model = load_qlora_model("Qwen/Qwen2.5-0.5B-Instruct", QLoRAConfig(lora_r=16), adapter_name_or_path="out")
```

Two bitsandbytes/TRL behaviours are switched off for the models this switch loads, because both make training
silently wrong:

- bitsandbytes (0.50, the version we test) repacks a CPU ``Linear4bit`` in place, for its AVX512-BF16 inference
  kernel, the first time it runs in ``eval()`` mode on an input that needs no gradient (any evaluation or greedy
  pass), and never converts it back; later training forwards then go through ``gemv_4bit``, which has no autograd
  kernel: LoRA gradients come out wrong (about 100% relative error) and linears with a bias raise "a view of a leaf
  Variable ... in-place operation". ``load_qlora_model`` turns that repack off on every 4-bit layer
  (``disable_cpu_inference_repack``).
- TRL's trainers cast the trainable weights of every quantized model to bfloat16 at construction, whatever the
  compute dtype. With ``bnb_4bit_compute_dtype="float32"`` the adapter then trains (and is saved) in bf16 while the
  model computes in float32; ``restore_adapter_dtype`` casts it back.

Our trainers, and the CLI for the stock ones, call both on their model after TRL's ``__init__``
(``keep_4bit_training_exact``), so a 4-bit model TRL loads itself from ``quantization_config`` is covered too. With a
stock trainer in Python, call ``keep_4bit_training_exact(trainer.model)`` before ``trainer.train()``.

QLoRA: Dettmers et al. 2023, https://arxiv.org/abs/2305.14314.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "QLoRAConfig",
    "bnb_quantization_config",
    "cpu_repacked_layers",
    "disable_cpu_inference_repack",
    "is_4bit_model",
    "keep_4bit_training_exact",
    "load_qlora_model",
    "lora_config",
    "require_bitsandbytes",
    "restore_adapter_dtype",
]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class QLoRAConfig:
    """What the QLoRA switch loads: a 4-bit base model plus LoRA adapters.

    Defaults follow the QLoRA paper: nf4 with double quantisation, bf16 compute, LoRA on all linear layers.
    """

    load_in_4bit: bool = field(
        default=True, metadata={"help": "Load the base weights in 4 bit. False gives plain LoRA."}
    )
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "'nf4' (paper default) or 'fp4'."})
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "Quantise the quantisation constants too."}
    )
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16", metadata={"help": "dtype of the matmuls: 'bfloat16', 'float16' or 'float32'."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules that get adapters; 'all-linear' skips the output head."}
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full next to the adapters (e.g. a reward model's 'score')."},
    )
    task_type: str | None = field(
        default="CAUSAL_LM", metadata={"help": "peft task type: 'CAUSAL_LM', 'SEQ_CLS', or None for other models."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Enable gradient checkpointing while preparing the model for k-bit training."}
    )

    def __post_init__(self) -> None:
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ValueError(
                f"QLoRAConfig.bnb_4bit_quant_type must be 'nf4' or 'fp4', got {self.bnb_4bit_quant_type!r}"
            )
        if self.bnb_4bit_compute_dtype not in _DTYPES:
            raise ValueError(
                f"QLoRAConfig.bnb_4bit_compute_dtype must be one of {sorted(_DTYPES)}, got {self.bnb_4bit_compute_dtype!r}"
            )
        if self.lora_r <= 0:
            raise ValueError(f"QLoRAConfig.lora_r must be a positive integer, got {self.lora_r}")

    @property
    def compute_dtype(self) -> torch.dtype:
        return _DTYPES[self.bnb_4bit_compute_dtype]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_bitsandbytes() -> None:
    """Raise an ImportError that names the extra to install when bitsandbytes is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "4-bit loading needs bitsandbytes, which is not installed. "
            "Install it with `pip install 'trl-extras[quantization]'` (or `pip install bitsandbytes`)."
        )


def bnb_quantization_config(config: QLoRAConfig):
    """The transformers ``BitsAndBytesConfig`` for ``config`` (4-bit nf4, double quantisation, compute dtype)."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=config.compute_dtype,
        bnb_4bit_quant_storage=config.compute_dtype,
    )


def lora_config(config: QLoRAConfig):
    """The peft ``LoraConfig`` for ``config``."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        modules_to_save=config.lora_modules_to_save,
        task_type=config.task_type,
    )


def is_4bit_model(model: torch.nn.Module) -> bool:
    """True when at least one linear layer of ``model`` holds bitsandbytes 4-bit weights."""
    return bool(_linear4bit_layers(model))


# bitsandbytes (0.50, the version we test) decides per layer, in ``Linear4bit.__init__``, whether ``forward`` may
# repack the CPU weights for its AVX512-BF16 inference kernel: ``self.support_avx512bf16_for_cpu = has_avx512bf16()``.
# It is an instance attribute, so setting it on the class would not reach layers that already exist (an instance
# attribute shadows a class one); it is set on each layer instead.
_REPACK_SWITCH = "support_avx512bf16_for_cpu"


def _linear4bit_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every bitsandbytes ``Linear4bit`` of ``model`` as ``(name, module)``; none (no import) without bitsandbytes."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return []
    return [(name, module) for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]


def cpu_repacked_layers(model: torch.nn.Module) -> list[str]:
    """Names of the 4-bit layers of ``model`` whose weights bitsandbytes has repacked for CPU inference.

    Such a layer computes its forward with ``gemv_4bit``, which has no autograd kernel: it must not be trained.
    """
    return [
        name
        for name, module in _linear4bit_layers(model)
        if getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False)
    ]


def disable_cpu_inference_repack(model: torch.nn.Module) -> int:
    """Keep every bitsandbytes ``Linear4bit`` of ``model`` in its trainable layout; returns how many layers it set.

    bitsandbytes repacks a CPU 4-bit layer in place the first time it runs in ``eval()`` mode on an input that needs
    no gradient (an evaluation, a greedy or sampling pass), so that inference can use its AVX512-BF16 kernel; the
    repacked layer then trains through ``gemv_4bit``, which has no autograd kernel (wrong LoRA gradients, and an
    in-place error for linears with a bias). This sets bitsandbytes' own per-layer switch
    (``Linear4bit.support_avx512bf16_for_cpu``) to ``False``: 4-bit CPU inference then dequantizes like training
    does (in the compute dtype, where the repacked kernel computes in bf16). CUDA layers never repack; the switch
    changes nothing there.

    Raises:
        ValueError: a layer was already repacked (it ran an inference pass before this call); bitsandbytes' inverse
            repack is lossy, so load the model again and call this before its first forward.
        RuntimeError: the installed bitsandbytes can repack CPU weights but has no such switch on a CPU layer.
    """
    layers = _linear4bit_layers(model)
    repacked = cpu_repacked_layers(model)
    if repacked:
        raise ValueError(
            f"disable_cpu_inference_repack: {len(repacked)} 4-bit layer(s) (first: {repacked[0]!r}) were already "
            "repacked by bitsandbytes for CPU inference (an eval-mode forward ran before this call) and cannot be "
            "trained; bitsandbytes' inverse repack is lossy. Load the model again and call this before its first "
            "forward (load_qlora_model does)."
        )
    if not layers:
        return 0
    bnb = sys.modules["bitsandbytes"]
    can_repack = hasattr(bnb.functional, "_convert_weight_packed_for_cpu")
    count = 0
    for name, module in layers:
        if hasattr(module, _REPACK_SWITCH):
            setattr(module, _REPACK_SWITCH, False)
            count += 1
        elif can_repack and module.weight.device.type == "cpu":
            raise RuntimeError(
                f"bitsandbytes {getattr(bnb, '__version__', '?')} can repack CPU 4-bit weights for inference, but "
                f"layer {name!r} has no `{_REPACK_SWITCH}` switch to turn that off, so its LoRA gradients would be "
                "wrong after any eval-mode pass. Install a bitsandbytes release that has the switch (0.50 does) "
                "or train on a CUDA device."
            )
    return count


def restore_adapter_dtype(model: torch.nn.Module) -> int:
    """Cast ``model``'s trainable weights back to float32 when its 4-bit layers compute in float32; returns how many.

    TRL's trainers cast every trainable weight of a quantized model to bfloat16 when they are built (the QLoRA
    paper's recipe, which computes in bf16). With a float32 compute dtype that makes the adapter train in bf16 and
    saves a bf16 adapter that reloads (upcast to float32 by peft) with different logits. Call this after building
    the trainer and before ``train()``; the optimizer does not exist yet, so it sees float32 weights. The values
    keep TRL's bf16 rounding (a fresh adapter's initialisation, so nothing is lost that training relied on). Does
    nothing for models without 4-bit layers or with another compute dtype.
    """
    dtypes = {module.compute_dtype for _, module in _linear4bit_layers(model)}
    if dtypes != {torch.float32}:
        return 0
    count = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.to(torch.float32)
            count += 1
    return count


def keep_4bit_training_exact(model: torch.nn.Module) -> None:
    """What our trainers (and the CLI, for the stock ones) call on the model TRL's ``__init__`` leaves, before training.

    ``disable_cpu_inference_repack`` (also for a 4-bit model TRL loaded itself from ``quantization_config``) and
    ``restore_adapter_dtype``. Does nothing for a model without 4-bit layers.
    """
    disable_cpu_inference_repack(model)
    restore_adapter_dtype(model)


def load_qlora_model(
    model_name_or_path: str,
    qlora_config: QLoRAConfig | None = None,
    model_class=None,
    adapter_name_or_path: str | None = None,
    **kwargs,
):
    """Load ``model_name_or_path`` with ``from_pretrained`` in 4 bit, prepare it for k-bit training, attach LoRA.

    Args:
        model_name_or_path: a Hub id or a local directory, passed to ``model_class.from_pretrained``.
        qlora_config: what to load; defaults to ``QLoRAConfig()``.
        model_class: a transformers auto class or model class; defaults to ``AutoModelForCausalLM``.
        adapter_name_or_path: a saved adapter (``trainer.save_model``'s directory) to load, trainable, instead of new
            LoRA weights; its own adapter config is used, the LoRA fields of ``qlora_config`` are ignored. A float32
            adapter stays float32; with a bf16/fp16 compute dtype the adapter keeps the dtype it was saved in, as it
            was trained. Either way the reloaded model gives the trained model's logits exactly.
        **kwargs: further ``from_pretrained`` arguments (``device_map``, ``attn_implementation``, ...).

    Returns:
        A ``peft.PeftModel`` whose base linear layers are 4-bit and whose LoRA weights are the only trainable ones.
        Disable the adapter (``with model.disable_adapter():``) to get the reference model. bitsandbytes' CPU
        inference repack is off on its 4-bit layers (see ``disable_cpu_inference_repack``), so evaluation passes
        leave them trainable.
    """
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    config = qlora_config or QLoRAConfig()
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    if config.load_in_4bit:
        kwargs.setdefault("quantization_config", bnb_quantization_config(config))
        if torch.cuda.is_available():
            kwargs.setdefault("device_map", {"": torch.cuda.current_device()})
    kwargs.setdefault("dtype", config.compute_dtype)
    model = model_class.from_pretrained(model_name_or_path, **kwargs)
    if config.load_in_4bit:
        disable_cpu_inference_repack(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if adapter_name_or_path is not None:
        return PeftModel.from_pretrained(
            model,
            adapter_name_or_path,
            is_trainable=True,
            autocast_adapter_dtype=config.compute_dtype == torch.float32,
        )
    return get_peft_model(model, lora_config(config))
