"""Collators that turn preference rows into the batches TRL's trainers consume.

- ``PreferenceCollator``: tokenised text pairs -> ``input_ids`` / ``attention_mask`` / ``completion_mask``, the
  layout of TRL's ``DPOTrainer``, with padding side, ``pad_to_multiple_of`` and pair-aware truncation.
- ``VisionPreferenceCollator``: image + text pairs -> the same plus the processor's image fields; truncation never
  cuts an image.
- ``DiffusionPreferenceCollator``: image pairs and captions -> tensors for a diffusion model's VAE and text encoder.
- ``DataCollatorForMDPO``: wraps a vision preference collator and adds mDPO's chosen rows with corrupted images
  under keys prefixed ``CORRUPTED_PREFIX`` (``"corrupted_"``).

``trl_extras.collators.utils`` holds the shared ``pad_sequences`` and ``truncate`` helpers.
"""

from .diffusion import DiffusionPreferenceCollator
from .mdpo import CORRUPTED_PREFIX, DataCollatorForMDPO
from .text import PreferenceCollator
from .utils import pad_sequences, truncate, truncate_preference_pair
from .vision import VisionPreferenceCollator

__all__ = [
    "CORRUPTED_PREFIX",
    "DataCollatorForMDPO",
    "DiffusionPreferenceCollator",
    "PreferenceCollator",
    "VisionPreferenceCollator",
    "pad_sequences",
    "truncate",
    "truncate_preference_pair",
]
