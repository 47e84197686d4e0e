"""Collators that turn preference rows into the batches TRL's trainers consume.

- ``PreferenceCollator``: tokenised text pairs -> ``input_ids`` / ``attention_mask`` / ``completion_mask``, the
  layout of TRL's ``DPOTrainer``, with padding side, ``pad_to_multiple_of`` and pair-aware truncation.
- ``VisionPreferenceCollator``: image + text pairs -> the same plus the processor's image fields; truncation never
  cuts an image.
- ``DiffusionPreferenceCollator``: image pairs and captions -> tensors for a diffusion model's VAE and text encoder.

``trl_extras.collators.utils`` holds the shared ``pad_sequences`` and ``truncate`` helpers.
"""

from .text import PreferenceCollator
from .utils import pad_sequences, truncate, truncate_preference_pair
from .vision import VisionPreferenceCollator

__all__ = ["PreferenceCollator", "VisionPreferenceCollator", "pad_sequences", "truncate", "truncate_preference_pair"]

try:  # written alongside; present once the diffusion collator lands
    from .diffusion import DiffusionPreferenceCollator  # noqa: F401

    __all__.append("DiffusionPreferenceCollator")
except ImportError:  # pragma: no cover
    pass
