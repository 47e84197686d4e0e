"""trl-extras: trainers TRL does not ship, as subclasses of TRL 1.x trainers.

Public names are imported lazily, so ``import trl_extras`` stays cheap and optional dependencies (diffusers,
bitsandbytes) are only needed by the names that use them.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


class _DropBitsandbytesKernelsNotice(logging.Filter):
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is imported on an
    AVX512-BF16 CPU without the ``kernels`` package, and peft imports it on every run, 4-bit or not. That kernel only
    serves bitsandbytes' repacked CPU inference layout, which every model our QLoRA switch loads has turned off
    (``trl_extras.quantization.disable_cpu_inference_repack``), so the notice is noise in every trl-extras run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropBitsandbytesKernelsNotice())

# public name -> module that defines it
_LAZY_NAMES: dict[str, str] = {
    # offline tiny-model kit
    "build_tiny_causal_lm": "trl_extras.testing",
    "build_tiny_reward_model": "trl_extras.testing",
    "build_tiny_tokenizer": "trl_extras.testing",
    "build_tiny_vlm": "trl_extras.testing",
    "build_tiny_diffusion_pipeline": "trl_extras.testing",
    "build_tiny_sd3_pipeline": "trl_extras.testing",
    "build_tiny_flux_pipeline": "trl_extras.testing",
    "build_tiny_sana_pipeline": "trl_extras.testing",
    "load_tiny_vlm_processor": "trl_extras.testing",
    # preference data layer
    "PreferenceDataError": "trl_extras.data",
    "validate_preference_dataset": "trl_extras.data",
    "validate_prompt_dataset": "trl_extras.data",
    "validate_image_pair_dataset": "trl_extras.data",
    "scored_to_pairs": "trl_extras.data",
    "ranked_to_pairs": "trl_extras.data",
    "image_pairs_to_preference": "trl_extras.data",
    # collators
    "PreferenceCollator": "trl_extras.collators",
    "VisionPreferenceCollator": "trl_extras.collators",
    "DiffusionPreferenceCollator": "trl_extras.collators",
    "DataCollatorForMDPO": "trl_extras.collators",
    # QLoRA switch
    "QLoRAConfig": "trl_extras.quantization",
    "load_qlora_model": "trl_extras.quantization",
    # trainers
    "UnlikelihoodConfig": "trl_extras.trainer.unlikelihood_config",
    "UnlikelihoodTrainer": "trl_extras.trainer.unlikelihood_trainer",
    "ReMaxConfig": "trl_extras.trainer.remax_config",
    "ReMaxTrainer": "trl_extras.trainer.remax_trainer",
    "PPOConfig": "trl_extras.trainer.ppo_config",
    "PPOTrainer": "trl_extras.trainer.ppo_trainer",
    "MDPOConfig": "trl_extras.trainer.mdpo_config",
    "MDPOTrainer": "trl_extras.trainer.mdpo_trainer",
    "DiffusionDPOConfig": "trl_extras.trainer.diffusion_dpo_config",
    "DiffusionDPOTrainer": "trl_extras.trainer.diffusion_dpo_trainer",
    # utilities
    "best_of_n": "trl_extras.sampling",
    "best_of_n_kl": "trl_extras.sampling",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'trl_extras' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .testing import build_tiny_causal_lm, build_tiny_reward_model, build_tiny_tokenizer  # noqa: F401
