"""The QLoRA switch: one way to load any model 4-bit (bitsandbytes nf4) with LoRA adapters on top.

Used by every trainer in trl-extras and usable with TRL's stock trainers: the returned ``PeftModel`` goes to the
trainer as ``model=``. TRL's DPO/GRPO/RLOO trainers, and ours, then take the reference model from the same network with
the adapter disabled (``with model.disable_adapter():``) instead of loading a second copy.

```python
from trl import DPOConfig, DPOTrainer
from trl_extras import QLoRAConfig, load_qlora_model

model = load_qlora_model("Qwen/Qwen2.5-0.5B-Instruct", QLoRAConfig(lora_r=16))
trainer = DPOTrainer(model=model, args=DPOConfig(...), train_dataset=dataset)  # ref = disabled adapter
```

QLoRA: Dettmers et al. 2023, https://arxiv.org/abs/2305.14314.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "QLoRAConfig",
    "bnb_quantization_config",
    "is_4bit_model",
    "load_qlora_model",
    "lora_config",
    "require_bitsandbytes",
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
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


def load_qlora_model(model_name_or_path: str, qlora_config: QLoRAConfig | None = None, model_class=None, **kwargs):
    """Load ``model_name_or_path`` with ``from_pretrained`` in 4 bit, prepare it for k-bit training, attach LoRA.

    Args:
        model_name_or_path: a Hub id or a local directory, passed to ``model_class.from_pretrained``.
        qlora_config: what to load; defaults to ``QLoRAConfig()``.
        model_class: a transformers auto class or model class; defaults to ``AutoModelForCausalLM``.
        **kwargs: further ``from_pretrained`` arguments (``device_map``, ``attn_implementation``, ...).

    Returns:
        A ``peft.PeftModel`` whose base linear layers are 4-bit and whose LoRA weights are the only trainable ones.
        Disable the adapter (``with model.disable_adapter():``) to get the reference model.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

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
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return get_peft_model(model, lora_config(config))
