"""Batches of image preference pairs for text-to-image diffusion models.

```python
from trl_extras.collators import DiffusionPreferenceCollator

collator = DiffusionPreferenceCollator(pipe.tokenizer, resolution=512)
batch = collator([{"caption": "a red square", "chosen": image_a, "rejected": image_b}])
batch["chosen_pixel_values"].shape  # (1, 3, 512, 512), values in [-1, 1]
```
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["DiffusionPreferenceCollator", "DiffusionPromptCollator", "preprocess_image"]


def preprocess_image(
    image: Image.Image, resolution: int, *, center_crop: bool = True, flip: bool = False
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Image -> ``(3, resolution, resolution)`` float tensor in ``[-1, 1]``, as Stable Diffusion's training scripts do.

    Steps: convert to RGB; resize (bilinear) so the shorter side is ``resolution``; mirror left-right if ``flip``;
    crop a ``resolution`` square, from the centre or at a random position; scale ``[0, 255]`` to ``[-1, 1]``.
    Random draws use Python's ``random`` module, so augmentation never shifts the ``torch`` RNG stream the trainer
    draws noise and timesteps from.

    Returns the tensor, the original ``(height, width)`` and the crop's ``(top, left)`` in the resized image: SDXL's
    size and crop micro-conditioning.
    """
    image = image.convert("RGB")
    original_size = (image.height, image.width)
    scale = resolution / min(image.width, image.height)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if center_crop:
        top = int(round((image.height - resolution) / 2.0))
        left = int(round((image.width - resolution) / 2.0))
    else:
        top = random.randint(0, image.height - resolution)
        left = random.randint(0, image.width - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W) in [0, 255]
    return pixels / 127.5 - 1.0, original_size, (top, left)


@dataclass
class DiffusionPreferenceCollator:
    """Collate ``{"caption", "chosen", "rejected"}`` rows (PIL images) into tensors for the VAE and text encoder(s).

    Rows are what ``trl_extras.data.validate_image_pair_dataset`` returns (Pick-a-Pic ``jpg_0``/``jpg_1``/``label_0``
    rows normalised to ``chosen``/``rejected``). Each image is resized, cropped and optionally flipped on its own
    (see ``preprocess_image``); captions are padded to ``tokenizer.model_max_length`` as diffusers pipelines do.

    Args:
        tokenizer: the pipeline's ``tokenizer``, or ``None`` to keep the captions as strings (``caption``: a list of
            ``B`` strings) for pipelines whose own ``encode_prompt`` tokenises them (SD3, Flux).
        tokenizer_2: SDXL's second tokenizer (``pipe.tokenizer_2``), or ``None``.
        resolution: side of the square training images, in pixels.
        center_crop: crop the centre (default) or a random square.
        random_flip: mirror each image left-right with probability 1/2.
        loss_type: ``"sft"`` leaves the rejected images out of the batch (the SFT baseline never reads them).

    Returns a dict of tensors, ``B`` = number of rows:

    - ``chosen_pixel_values``, ``rejected_pixel_values``: ``(B, 3, resolution, resolution)``, in ``[-1, 1]``.
    - ``input_ids`` (and ``input_ids_2`` with ``tokenizer_2``): ``(B, model_max_length)``; without a tokenizer,
      ``caption``: the ``B`` captions.
    - ``chosen_original_sizes``, ``rejected_original_sizes``: ``(B, 2)`` original ``(height, width)``;
      ``chosen_crop_top_lefts``, ``rejected_crop_top_lefts``: ``(B, 2)`` crop ``(top, left)``. SDXL's
      micro-conditioning; the trainer ignores them for other models.
    """

    tokenizer: Any
    tokenizer_2: Any = None
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    loss_type: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.resolution <= 0:
            raise ValueError(
                f"DiffusionPreferenceCollator.resolution must be a positive integer, got {self.resolution}"
            )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        sides = ("chosen",) if self.loss_type == "sft" else ("chosen", "rejected")
        batch: dict[str, torch.Tensor] = {}
        for side in sides:
            pixels, sizes, crops = [], [], []
            for index, feature in enumerate(features):
                image = feature.get(side)
                if not isinstance(image, Image.Image):
                    raise TypeError(
                        f"Batch row {index}, column {side!r}: expected a PIL image, got {type(image).__name__}. Pass "
                        "the dataset through trl_extras.data.validate_image_pair_dataset first (it decodes bytes, "
                        "paths and Pick-a-Pic columns into PIL images)."
                    )
                flip = self.random_flip and random.random() < 0.5
                tensor, size, crop = preprocess_image(image, self.resolution, center_crop=self.center_crop, flip=flip)
                pixels.append(tensor)
                sizes.append(size)
                crops.append(crop)
            batch[f"{side}_pixel_values"] = torch.stack(pixels)
            batch[f"{side}_original_sizes"] = torch.tensor(sizes, dtype=torch.long)
            batch[f"{side}_crop_top_lefts"] = torch.tensor(crops, dtype=torch.long)
        captions = []
        for index, feature in enumerate(features):
            caption = feature.get("caption")
            if not isinstance(caption, str):
                raise TypeError(
                    f"Batch row {index}, column 'caption': expected a string, got {type(caption).__name__}."
                )
            captions.append(caption)
        if self.tokenizer is None:
            batch["caption"] = captions
            return batch
        batch["input_ids"] = self._tokenize(self.tokenizer, captions)
        if self.tokenizer_2 is not None:
            batch["input_ids_2"] = self._tokenize(self.tokenizer_2, captions)
        return batch

    @staticmethod
    def _tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
        return tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids


@dataclass
class DiffusionPromptCollator:
    """Collate prompt rows for online Diffusion-DPO (the trainer samples and scores the images itself).

    Each row has a ``prompt`` (as TRL's GRPO datasets) or ``caption`` string; every other column is kept, as a list
    per column under ``reward_kwargs``, for the reward functions (GRPO passes dataset columns the same way).

    Returns ``{"caption": [B strings], "reward_kwargs": {column: [B values]}}``. With ``image_collator``, batches of
    image pairs (rows with ``chosen``, e.g. a held-out evaluation set) go to it instead.
    """

    image_collator: DiffusionPreferenceCollator | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if self.image_collator is not None and features and "chosen" in features[0]:
            return self.image_collator(features)
        captions, extra = [], {}
        for index, feature in enumerate(features):
            key = "prompt" if "prompt" in feature else "caption"
            caption = feature.get(key)
            if not isinstance(caption, str):
                raise TypeError(
                    f"Batch row {index}: online Diffusion-DPO needs a string column 'prompt' (or 'caption'), got "
                    f"{type(caption).__name__} under {key!r}."
                )
            captions.append(caption)
            for column, value in feature.items():
                if column not in ("prompt", "caption"):
                    extra.setdefault(column, []).append(value)
        return {"caption": captions, "reward_kwargs": extra}
