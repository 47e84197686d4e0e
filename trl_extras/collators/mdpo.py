"""mDPO's batches: a vision preference batch plus, under keys prefixed ``corrupted_``, the chosen rows with
corrupted images that mDPO's conditional term scores (``trl_extras.trainer.mdpo_trainer.MDPOTrainer``).

```python
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl_extras.collators import DataCollatorForMDPO

collator = DataCollatorForMDPO(base=DataCollatorForVisionPreference(processor), processor=processor, seed=0)
batch = collator(rows)  # DPO's 2B rows unchanged + corrupted_input_ids, corrupted_pixel_values, ... (B rows)
```
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from ..image_corruption import ImageCorruption

__all__ = ["CORRUPTED_PREFIX", "DataCollatorForMDPO"]

#: Prefix of the batch keys that hold the conditional term's rows (chosen response, corrupted image).
CORRUPTED_PREFIX = "corrupted_"


def _as_pil(image: Any, row: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    raise TypeError(
        f"MDPOTrainer: row {row} of the batch has an image of type {type(image).__name__}; the image corruption "
        "needs decoded images (PIL.Image.Image or a uint8 numpy array). Cast the column with datasets.Image()."
    )


def _copy_example(example: dict[str, Any]) -> dict[str, Any]:
    # TRL's collators rewrite the examples they get (image -> images, string messages -> content parts); give each
    # collator its own copy of the text fields so the two calls see the same raw row.
    return {
        key: copy.deepcopy(value) if key in ("prompt", "chosen", "rejected") else value
        for key, value in example.items()
    }


@dataclass
class DataCollatorForMDPO:
    """Adds the rows of mDPO's conditional term to a vision preference batch.

    ``base`` is the vision preference collator DPOTrainer would use (TRL's ``DataCollatorForVisionPreference`` or
    ``trl_extras.VisionPreferenceCollator``); its batch is returned unchanged, with ``2 * batch`` rows
    ``[prompt + chosen, prompt + rejected]``. Next to it, under keys prefixed ``corrupted_``, come ``batch`` rows
    ``prompt + chosen`` whose images are corrupted copies (``corruption``) of the true ones, collated by TRL's
    prompt-completion vision collator so that they are tokenised exactly like the chosen rows (checked per row).

    Each row's corruption draws from a generator seeded with ``seed`` and ``global_row(index)``, ``index`` being the
    number of rows of this process before it and ``global_row`` its place among the rows of all processes: a run is
    reproducible for a given seed, 2 processes draw what 1 process with their whole batch draws, every step gets
    fresh crops, and a batch split into gradient-accumulation micro-batches gets the crops the whole batch would.
    ``rows`` is the index the next row gets. In a DataLoader worker (``dataloader_num_workers > 0``), which collates
    the batches ``id, id + num_workers, ...`` of the loader on a copy of the collator made when the loader starts,
    ``index`` is counted from that copy's ``rows`` and the worker's place in the loader (``batch_size`` rows per
    batch), so any number of workers draws what none does. ``MDPOTrainer`` sets ``rows`` to the rows it trained on at
    each epoch start, saves them in each checkpoint and restores them on resume, and evaluates with a copy of its
    own, so a resumed run draws what the uninterrupted run drew.
    """

    base: Callable[[list[dict[str, Any]]], dict[str, Any]]
    processor: ProcessorMixin
    corruption: ImageCorruption = field(default_factory=ImageCorruption)
    seed: int = 0
    max_length: int | None = None
    rows: int = 0
    # Set by MDPOTrainer from its accelerator: the corruption of a row depends on its place among all processes' rows
    num_processes: int = 1
    process_index: int = 0
    batch_size: int | None = None
    _chosen_collator: DataCollatorForVisionLanguageModeling | None = field(default=None, init=False, repr=False)
    _worker_rows: int = field(default=0, init=False, repr=False)  # rows this DataLoader worker's copy corrupted

    def __post_init__(self) -> None:
        self._chosen_collator = DataCollatorForVisionLanguageModeling(
            processor=self.processor, max_length=self.max_length, completion_only_loss=True
        )

    def corrupt(self, example: dict[str, Any], row: int) -> list[Image.Image]:
        # the 0 is what the worker id was when workers drew their own streams: without workers, the same draws
        rng = np.random.default_rng([self.seed, 0, self.global_row(self._next_index())])
        images = example["images"] if "images" in example else [example["image"]]
        return [self.corruption(_as_pil(image, row), rng) for image in images]

    def _next_index(self) -> int:
        """The index of the row being corrupted among this process's rows (see the class docstring)."""
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            self.rows += 1
            return self.rows - 1
        # worker `id` of `num_workers` collates the loader's batches id, id + num_workers, ... in order
        done = self._worker_rows
        self._worker_rows += 1
        if not self.batch_size:  # standalone use without a batch size: rows interleaved across workers, still unique
            return self.rows + done * worker.num_workers + worker.id
        batch, offset = divmod(done, self.batch_size)
        return self.rows + (batch * worker.num_workers + worker.id) * self.batch_size + offset

    def global_row(self, rows: int) -> int:
        """Where this process's `rows`-th row stands in the rows of all processes, as accelerate shards batches
        (process ``k`` takes batch ``step * num_processes + k`` of ``batch_size`` rows), so that several processes
        draw the corruptions one process with their whole batch draws. One process: ``rows`` itself."""
        if self.num_processes == 1 or not self.batch_size:
            return rows
        step, offset = divmod(rows, self.batch_size)
        return (step * self.num_processes + self.process_index) * self.batch_size + offset

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base([_copy_example(example) for example in examples])
        chosen_rows = []
        for row, example in enumerate(examples):
            chosen_row = {"images": self.corrupt(example, row)}
            chosen_row.update(
                {k: copy.deepcopy(v) for k, v in example.items() if k in ("prompt", "tools", "chat_template_kwargs")}
            )
            chosen_row["completion"] = copy.deepcopy(example["chosen"])
            chosen_rows.append(chosen_row)
        corrupted = self._chosen_collator(chosen_rows)
        corrupted["completion_mask"] = (corrupted.pop("labels") != -100).long()
        self._check(batch, corrupted)
        batch.update({CORRUPTED_PREFIX + key: value for key, value in corrupted.items()})
        return batch

    def _check(self, batch: dict[str, Any], corrupted: dict[str, Any]) -> None:
        num_rows = corrupted["input_ids"].size(0)
        completion_tokens = batch["completion_mask"].sum(dim=1)
        if (completion_tokens == 0).any():
            row = int((completion_tokens == 0).nonzero()[0]) % num_rows
            raise ValueError(
                f"MDPOTrainer: in row {row} of the batch the prompt, with its image tokens, fills "
                f"max_length={self.max_length}, so a response has no token left to train on. Increase max_length "
                "(or set it to None) or shorten the prompt."
            )
        for row in range(num_rows):
            chosen = batch["input_ids"][row][batch["completion_mask"][row].bool()]
            chosen_with_corrupted_image = corrupted["input_ids"][row][corrupted["completion_mask"][row].bool()]
            if not torch.equal(chosen, chosen_with_corrupted_image):
                raise ValueError(
                    f"MDPOTrainer: row {row} of the batch: the chosen response tokenises differently next to the true "
                    f"image ({chosen.tolist()}) and next to the corrupted image ({chosen_with_corrupted_image.tolist()}). "
                    "The base collator must tokenise prompt and chosen response like TRL's DataCollatorForVisionPreference."
                )
