"""Seeded image corruptions, PIL and numpy only (no torchvision).

mDPO (https://arxiv.org/abs/2406.11839) contrasts the chosen response under the true image ``m`` with the same
response under a corrupted image ``m'`` that carries less visual information. The paper's choice is a random crop
that keeps at most 20% of the image area ("crop 0-20%", better in its ablation than keeping 20-50% or MoCo v2's
augmentations); the crop is resized back to the original size, so the processor gives ``m'`` exactly as many image
tokens as ``m``. Masking and noise are offered as extra options.

```python
import numpy as np
from PIL import Image
from trl_extras.image_corruption import ImageCorruption

corruption = ImageCorruption(crop_min_area=0.01, crop_max_area=0.2, mask_fraction=0.25, noise_std=0.1)
rng = np.random.default_rng(0)
corrupted = corruption(Image.new("RGB", (64, 64), "red"), rng)  # same size and mode as the input
```

Corruptions apply in the order crop, mask, noise, and draw all their randomness from the generator passed in, so the
same seed gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["ImageCorruption", "corrupt_image", "sample_crop_box", "sample_mask"]


def sample_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    min_area: float,
    max_area: float,
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random crop box ``(left, top, right, bottom)`` covering a fraction of the image area in ``[min_area, max_area]``.

    The area fraction is uniform in ``[min_area, max_area]`` and the aspect ratio (width / height) log-uniform in
    ``aspect_ratio``; the box is then rounded to whole pixels (at least one) and clipped to the image, so for very
    small images or extreme ratios the realised fraction can differ from the drawn one by the rounding.
    """
    area = rng.uniform(min_area, max_area) * width * height
    log_lo, log_hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    crop_w = min(width, max(1, round(math.sqrt(area * ratio))))
    crop_h = min(height, max(1, round(math.sqrt(area / ratio))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return left, top, left + crop_w, top + crop_h


def sample_mask(width: int, height: int, rng: np.random.Generator, fraction: float, grid: int) -> np.ndarray:
    """A boolean ``(height, width)`` mask: ``round(fraction * grid**2)`` random cells of a ``grid x grid`` partition.

    When ``width`` and ``height`` are multiples of ``grid`` the masked share of pixels is exactly the masked share of
    cells.
    """
    mask = np.zeros((height, width), dtype=bool)
    num_cells = round(fraction * grid * grid)
    if num_cells == 0:
        return mask
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    for cell in rng.choice(grid * grid, size=num_cells, replace=False):
        r, c = divmod(int(cell), grid)
        mask[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = True
    return mask


@dataclass(frozen=True)
class ImageCorruption:
    """How to corrupt an image: random crop (resized back), random cell masking and Gaussian pixel noise.

    Args:
        crop_min_area: Smallest fraction of the image area the random crop keeps.
        crop_max_area: Largest fraction of the image area the random crop keeps (paper: 0.2). ``1.0`` with
            ``crop_min_area=1.0`` disables cropping.
        crop_aspect_ratio: Range of the crop's width / height, sampled log-uniformly.
        mask_fraction: Fraction of the image (in cells of a ``mask_grid x mask_grid`` partition) set to
            ``mask_value``; 0 disables masking.
        mask_grid: Number of cells per side of the masking grid.
        mask_value: Pixel value (0-255) written into masked cells, in every channel.
        noise_std: Standard deviation of the Gaussian noise added to each pixel, in units of the full pixel range
            (1.0 = 255 levels); 0 disables noise. Results are clipped to the valid range.
    """

    crop_min_area: float = 0.01
    crop_max_area: float = 0.2
    crop_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mask_fraction: float = 0.0
    mask_grid: int = 8
    mask_value: int = 0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_min_area <= self.crop_max_area <= 1.0:
            raise ValueError(
                "ImageCorruption needs 0 < crop_min_area <= crop_max_area <= 1, got "
                f"crop_min_area={self.crop_min_area}, crop_max_area={self.crop_max_area}."
            )
        lo, hi = self.crop_aspect_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"ImageCorruption.crop_aspect_ratio must satisfy 0 < low <= high, got {(lo, hi)}.")
        if not 0.0 <= self.mask_fraction <= 1.0:
            raise ValueError(f"ImageCorruption.mask_fraction must be in [0, 1], got {self.mask_fraction}.")
        if self.mask_grid < 1:
            raise ValueError(f"ImageCorruption.mask_grid must be a positive integer, got {self.mask_grid}.")
        if not 0 <= self.mask_value <= 255:
            raise ValueError(f"ImageCorruption.mask_value must be in [0, 255], got {self.mask_value}.")
        if self.noise_std < 0.0:
            raise ValueError(f"ImageCorruption.noise_std must be >= 0, got {self.noise_std}.")

    @property
    def crops(self) -> bool:
        return self.crop_min_area < 1.0

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """A corrupted copy of ``image``, same size; L, RGB and RGBA keep their mode, other modes become RGB."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"ImageCorruption expects a PIL.Image.Image, got {type(image).__name__}.")
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGB")
        width, height = image.size
        if self.crops:
            box = sample_crop_box(width, height, rng, self.crop_min_area, self.crop_max_area, self.crop_aspect_ratio)
            image = image.crop(box).resize((width, height), Image.Resampling.BILINEAR)
        if self.mask_fraction == 0.0 and self.noise_std == 0.0:
            return image.copy()
        pixels = np.asarray(image, dtype=np.float32)  # (H, W) or (H, W, C), 0..255
        if self.mask_fraction > 0.0:
            pixels = pixels.copy()
            pixels[sample_mask(width, height, rng, self.mask_fraction, self.mask_grid)] = self.mask_value
        if self.noise_std > 0.0:
            pixels = pixels + rng.normal(0.0, self.noise_std * 255.0, size=pixels.shape)
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels)  # uint8 (H, W[, C]) maps back to L, RGB or RGBA


def corrupt_image(image: Image.Image, seed: int | np.random.Generator | None = None, **options) -> Image.Image:
    """Corrupt one image with ``ImageCorruption(**options)`` and a generator seeded with ``seed``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return ImageCorruption(**options)(image, rng)
