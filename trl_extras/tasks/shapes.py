"""The built-in offline image task: coloured squares, for mDPO (vision-language) and Diffusion-DPO (text-to-image).

Ground truth is the colour of the square. Everything is synthetic (PIL), seeded and deterministic:

- ``build_vision_preference_dataset``: an image of a coloured square on a noisy background, the question "What
  colour is the square?", the true answer as ``chosen`` and a wrong colour as ``rejected`` (TRL's conversational
  vision preference format: ``images``, ``prompt``, ``chosen``, ``rejected``).
- ``build_image_preference_dataset``: a caption ("a square") with a warm-coloured (red, yellow) square as ``chosen``
  and a cool-coloured (green, blue) one as ``rejected`` (``caption``, ``chosen``, ``rejected``, as
  ``DiffusionDPOTrainer`` reads it): a stand-in for an aesthetic preference that holds whatever the caption.
- ``colour_match`` / ``warmth``: ground-truth scores of an image, the fraction of its pixels nearest a colour.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COLOURS",
    "QUESTION",
    "build_image_preference_dataset",
    "build_vision_preference_dataset",
    "colour_match",
    "colour_square",
    "warmth",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 40),
}
QUESTION = "What colour is the square?"
WARM, COOL = ("red", "yellow"), ("green", "blue")
CAPTIONS = ("a square", "a picture of a square", "a square on a white background", "an image of a square")
_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def colour_square(
    colour: str, rng: np.random.Generator, size: int = 64, noisy_background: bool = True, fill: float = 0.5
):
    """A ``size`` x ``size`` RGB image with a square of ``colour``, ``fill`` of its side, at a random position."""
    from PIL import Image, ImageDraw

    if noisy_background:
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    else:
        image = Image.new("RGB", (size, size), _BACKGROUNDS["white"])
    side = max(1, round(size * fill))
    left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    ImageDraw.Draw(image).rectangle((left, top, left + side - 1, top + side - 1), fill=COLOURS[colour])
    return image


def colour_match(image, colour: str) -> float:
    """Fraction of the pixels of ``image`` whose nearest colour (of the palette plus white and black) is ``colour``."""
    palette = {**COLOURS, **_BACKGROUNDS}
    names = list(palette)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 1, 3)
    centres = np.asarray([palette[name] for name in names], dtype=np.float32).reshape(1, -1, 3)
    nearest = np.argmin(((pixels - centres) ** 2).sum(-1), axis=1)
    return float((nearest == names.index(colour)).mean())


def _wrong_colour(colour: str, rng: np.random.Generator) -> str:
    others = [name for name in COLOURS if name != colour]
    return others[int(rng.integers(0, len(others)))]


def _seed(kind: str, seed: int, split: str) -> list[int]:
    return [{"vision": 0, "image": 1}[kind], seed, 0 if split == "train" else 1]


def build_vision_preference_dataset(num_rows: int = 64, seed: int = 0, split: str = "train"):
    """Vision preference pairs: ``images`` (one 64 px image), ``prompt``/``chosen``/``rejected`` messages."""
    from datasets import Dataset

    rng = np.random.default_rng(_seed("vision", seed, split))
    names = list(COLOURS)
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for index in range(num_rows):
        colour = names[index % len(names)]
        rows["images"].append([colour_square(colour, rng)])
        rows["prompt"].append([{"role": "user", "content": QUESTION}])
        rows["chosen"].append([{"role": "assistant", "content": f"The square is {colour}."}])
        rows["rejected"].append([{"role": "assistant", "content": f"The square is {_wrong_colour(colour, rng)}."}])
    return Dataset.from_dict(rows)


def build_image_preference_dataset(num_rows: int = 64, seed: int = 0, split: str = "train", size: int = 32):
    """Text-to-image preference pairs with a warm-colour ground truth: ``caption``, ``chosen``, ``rejected``.

    A stand-in for human aesthetic preference (Pick-a-Pic): for a caption such as "a square", the preferred image
    shows a warm (red or yellow) square and the dispreferred one a cool (green or blue) square. ``warmth`` scores it.
    """
    from datasets import Dataset

    rng = np.random.default_rng(_seed("image", seed, split))
    rows = {"caption": [], "chosen": [], "rejected": []}
    for index in range(num_rows):
        warm, cool = WARM[index % len(WARM)], COOL[int(rng.integers(0, len(COOL)))]
        rows["caption"].append(CAPTIONS[index % len(CAPTIONS)])
        rows["chosen"].append(colour_square(warm, rng, size=size, noisy_background=False, fill=0.875))
        rows["rejected"].append(colour_square(cool, rng, size=size, noisy_background=False, fill=0.875))
    return Dataset.from_dict(rows)


def warmth(image) -> float:
    """Ground truth of the text-to-image task: the fraction of pixels nearest a warm colour (red or yellow)."""
    return sum(colour_match(image, colour) for colour in WARM)
