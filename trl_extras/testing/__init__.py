"""Offline tiny-model kit.

No machine of ours reaches a model hub, and neither does the CI of many of our users. Every builder here creates a
tiny, seeded model, saves it with ``save_pretrained`` into ``directory`` and returns that path, so that tests and the
offline defaults load it back through the real ``from_pretrained(path)`` code path. Each builds in seconds on a CPU.

- ``build_tiny_causal_lm``: Llama-style causal LM with a byte-level BPE tokenizer (pad/eos, chat template).
- ``build_tiny_reward_model``: Llama-style sequence classifier with one label, same tokenizer.
- ``build_tiny_vlm``: a vision-language model TRL's DPOTrainer supports, with its processor.
- ``build_tiny_diffusion_pipeline``: a text-to-image pipeline that ``DiffusionPipeline.from_pretrained`` loads.
"""

from ._lm import CHAT_TEMPLATE, build_tiny_causal_lm, build_tiny_reward_model, build_tiny_tokenizer

__all__ = ["CHAT_TEMPLATE", "build_tiny_causal_lm", "build_tiny_reward_model", "build_tiny_tokenizer"]

try:  # builders owned by the vision and diffusion modules; present once those land
    from ._vlm import build_tiny_vlm  # noqa: F401

    __all__.append("build_tiny_vlm")
except ImportError:  # pragma: no cover
    pass
try:
    from ._diffusion import build_tiny_diffusion_pipeline  # noqa: F401

    __all__.append("build_tiny_diffusion_pipeline")
except ImportError:  # pragma: no cover
    pass
