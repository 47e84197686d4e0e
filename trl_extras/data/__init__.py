"""The preference data layer: one place where every trainer checks and normalises its data before tokenisation.

- `validate_preference_dataset`: TRL's preference formats (standard or conversational, explicit or implicit prompt,
  optional images), returned with an explicit prompt.
- `validate_prompt_dataset`: prompt-only data for GRPO, RLOO, ReMax and PPO.
- `validate_sft_dataset`: SFT data (`text`, `messages`, or `prompt` and `completion`).
- `validate_image_pair_dataset` / `image_pairs_to_preference`: image pairs for Diffusion-DPO (Pick-a-Pic style).
- `scored_to_pairs` / `ranked_to_pairs`: scored or ranked feedback turned into preference pairs.

Bad rows raise `PreferenceDataError` naming the row, the column and what was expected, or, with
`on_invalid="drop"`, are dropped and reported in a `logging` warning. See docs/data.md.
"""

from .errors import PreferenceDataError
from .image_pairs import image_pairs_to_preference, validate_image_pair_dataset
from .pairs import ranked_to_pairs, scored_to_pairs
from .preference import validate_preference_dataset, validate_prompt_dataset
from .sft import validate_sft_dataset

__all__ = [
    "PreferenceDataError",
    "image_pairs_to_preference",
    "ranked_to_pairs",
    "scored_to_pairs",
    "validate_image_pair_dataset",
    "validate_preference_dataset",
    "validate_prompt_dataset",
    "validate_sft_dataset",
]
