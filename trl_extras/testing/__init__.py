"""Offline tiny-model kit.

No machine of ours reaches a model hub, and neither does the CI of many of our users. Every builder here creates a
tiny, seeded model, saves it with ``save_pretrained`` into ``directory`` and returns that path, so that tests and the
offline defaults load it back through the real ``from_pretrained(path)`` code path. Each builds in seconds on a CPU.

- ``build_tiny_causal_lm``: Llama-style causal LM with a byte-level BPE tokenizer (pad/eos, chat template).
- ``build_tiny_reward_model``: Llama-style sequence classifier with one label, same tokenizer.
- ``build_tiny_vlm``: a vision-language model TRL's DPOTrainer supports (Llava or Qwen2-VL), with its processor;
  ``load_tiny_vlm_processor`` loads that processor back even without torchvision.
- ``build_tiny_diffusion_pipeline``: a text-to-image pipeline that ``DiffusionPipeline.from_pretrained`` loads;
  ``build_tiny_sd3_pipeline``, ``build_tiny_flux_pipeline``, ``build_tiny_sana_pipeline``: the same for SD3, Flux and
  Sana (flow matching). ``vae="linear"`` (SD, SD3, Flux): a VAE whose decoded colours are a linear map of the
  latents, for tests whose image reward must follow what the denoiser learnt.
"""

from ._diffusion import (
    build_tiny_diffusion_pipeline,
    build_tiny_flux_pipeline,
    build_tiny_sana_pipeline,
    build_tiny_sd3_pipeline,
)
from ._lm import CHAT_TEMPLATE, build_tiny_causal_lm, build_tiny_reward_model, build_tiny_tokenizer
from ._vlm import build_tiny_vlm, load_tiny_vlm_processor

__all__ = [
    "CHAT_TEMPLATE",
    "build_tiny_causal_lm",
    "build_tiny_diffusion_pipeline",
    "build_tiny_flux_pipeline",
    "build_tiny_reward_model",
    "build_tiny_sana_pipeline",
    "build_tiny_sd3_pipeline",
    "build_tiny_tokenizer",
    "build_tiny_vlm",
    "load_tiny_vlm_processor",
]
