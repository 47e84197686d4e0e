"""Batches of image + text preference pairs for vision-language models under ``DPOTrainer``.

```python
from trl_extras.collators import VisionPreferenceCollator

collator = VisionPreferenceCollator(processor, max_length=256)
batch = collator([{
    "images": [image],
    "prompt": [{"role": "user", "content": "What is shown?"}],
    "chosen": [{"role": "assistant", "content": "A red square."}],
    "rejected": [{"role": "assistant", "content": "A dog."}],
}])
sorted(batch)  # attention_mask, completion_mask, input_ids, pixel_values (+ image_grid_thw, mm_token_type_ids...)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from transformers import ProcessorMixin
from transformers.data.data_collator import DataCollatorMixin
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

from ..data.errors import PreferenceDataError
from .utils import (
    PADDING_SIDES,
    TRUNCATION_MODES,
    check_option,
    check_positive,
    pad_sequences,
    truncate_preference_pair,
)

__all__ = ["VisionPreferenceCollator"]

# Processor outputs aligned with `input_ids` token by token; every other output is per image (or per row) and is
# repeated for the rejected half of the batch.
_SEQUENCE_KEYS = ("token_type_ids", "mm_token_type_ids")
_TEXT_KEYS = ("input_ids", "attention_mask", *_SEQUENCE_KEYS)


@dataclass
class VisionPreferenceCollator(DataCollatorMixin):
    """Collate raw image + text preference rows into the batch TRL's ``DPOTrainer`` consumes for vision models.

    Each example has ``prompt``, ``chosen`` and ``rejected`` (conversational messages or, in the standard format,
    strings whose prompt already holds the processor's image token) and its images in ``images`` (a list) or
    ``image`` (one image, or ``None`` for a text-only row). Conversational rows go through TRL's
    ``prepare_multimodal_messages`` and the chat template, as in TRL's ``DataCollatorForVisionPreference``.

    For ``B`` pairs the output holds, like TRL's collator:

    - ``input_ids``, ``attention_mask``, ``completion_mask`` ``(2B, L)``: chosen rows first, then rejected rows; each
      row is ``prompt + completion`` followed (or, with ``padding_side="left"``, preceded) by padding;
    - the processor's image fields for the ``2B`` rows: ``pixel_values`` (Llava ``(2 * n_images, 3, H, W)``,
      Qwen2-VL ``(2 * n_patches, patch_dim)``), ``image_grid_thw`` ``(2 * n_images, 3)``, ``image_sizes``, ... The
      images are processed once per pair and repeated for the rejected half (TRL processes each image twice);
    - ``token_type_ids`` / ``mm_token_type_ids`` ``(2B, L)`` when the processor returns them, 0 on completions.

    Truncation works per pair as in ``PreferenceCollator`` (``max_length`` with ``keep_start`` or ``keep_end``,
    ``max_prompt_length``, ``max_completion_length``), and never cuts an image: the image placeholder tokens (and
    the special tokens around them, such as Qwen2-VL's ``<|vision_start|>``/``<|vision_end|>``) must match the
    image features, so a cut that would reach them raises ``PreferenceDataError`` naming the row. TRL instead
    cuts them silently with ``keep_start`` and refuses ``keep_end`` outright (TRL issue 5285); here ``keep_end``
    works whenever the text before the first image is enough to cut.

    Args:
        processor: The model's processor (tokenizer + image processor), with a pad token (or an eos token).
        max_length, truncation_mode, max_prompt_length, max_completion_length, padding_side, pad_to_multiple_of,
            return_tensors: As in ``PreferenceCollator``.
    """

    processor: ProcessorMixin
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self):
        if not isinstance(self.processor, ProcessorMixin) or not hasattr(self.processor, "tokenizer"):
            raise ValueError(
                f"`processor` must be a transformers ProcessorMixin with a tokenizer (e.g. from "
                f"AutoProcessor.from_pretrained), got {type(self.processor).__name__}."
            )
        check_option("truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        check_option("padding_side", self.padding_side, PADDING_SIDES)
        check_option("return_tensors", self.return_tensors, ("pt",))
        for name in ("max_length", "max_prompt_length", "max_completion_length", "pad_to_multiple_of"):
            check_positive(name, getattr(self, name))
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("`processor.tokenizer` has neither a pad token nor an eos token to pad with.")
        self._image_token_ids = _image_token_ids(self.processor)
        self._delimiter_ids = _delimiter_candidate_ids(tokenizer)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [_normalise(example, row) for row, example in enumerate(examples)]
        images = [example["images"] for example in examples]
        if all(len(row_images) == 0 for row_images in images):
            images = None  # processors refuse an empty image list
        texts = [_render(example, self.processor) for example in examples]

        prompts = self.processor(
            images=images,
            text=[prompt for prompt, _, _ in texts],
            padding=True,
            padding_side="right",
            return_tensors="pt",
            add_special_tokens=False,  # the chat template already wrote the special tokens
        )
        tokenizer = self.processor.tokenizer
        chosen_ids = tokenizer([c for _, c, _ in texts], add_special_tokens=False)["input_ids"]
        rejected_ids = tokenizer([r for _, _, r in texts], add_special_tokens=False)["input_ids"]
        sequence_keys = [key for key in _SEQUENCE_KEYS if key in prompts]

        rows = {key: [[], []] for key in ("input_ids", "completion_mask", *sequence_keys)}  # [chosen, rejected]
        for row in range(len(examples)):
            length = int(prompts["attention_mask"][row].sum())
            prompt = prompts["input_ids"][row, :length].tolist()
            if len(chosen_ids[row]) == 0 or len(rejected_ids[row]) == 0:
                column = "chosen" if len(chosen_ids[row]) == 0 else "rejected"
                raise PreferenceDataError(
                    expected="a completion with at least one token", got="an empty completion", row=row, column=column
                )
            truncated, chosen, rejected = truncate_preference_pair(
                prompt,
                chosen_ids[row],
                rejected_ids[row],
                max_length=self.max_length,
                truncation_mode=self.truncation_mode,
                max_prompt_length=self.max_prompt_length,
                max_completion_length=self.max_completion_length,
                protected_span=self._image_span(prompt, prompts, row, length),
                row=row,
            )
            start = length - len(truncated)  # truncation only ever removes the start of a prompt
            for side, completion in enumerate((chosen, rejected)):
                rows["input_ids"][side].append(truncated + list(completion))
                rows["completion_mask"][side].append([0] * len(truncated) + [1] * len(completion))
                for key in sequence_keys:
                    rows[key][side].append(prompts[key][row, start:length].tolist() + [0] * len(completion))

        padding = dict(padding_side=self.padding_side, pad_to_multiple_of=self.pad_to_multiple_of)
        input_ids = rows["input_ids"][0] + rows["input_ids"][1]
        output = {
            "input_ids": pad_sequences(input_ids, padding_value=self.pad_token_id, **padding),
            "attention_mask": pad_sequences([[1] * len(ids) for ids in input_ids], padding_value=0, **padding),
            "completion_mask": pad_sequences(rows["completion_mask"][0] + rows["completion_mask"][1], **padding),
        }
        for key in sequence_keys:
            output[key] = pad_sequences(rows[key][0] + rows[key][1], padding_value=0, **padding)
        for key, value in prompts.items():  # image fields: the same images for the chosen and the rejected half
            if key not in _TEXT_KEYS:
                output[key] = torch.cat([value, value]) if isinstance(value, torch.Tensor) else list(value) * 2
        return output

    def _image_span(self, prompt: list[int], prompts, row: int, length: int) -> tuple[int, int] | None:
        """``(start, stop)`` of the prompt tokens that belong to images: placeholders plus adjacent special tokens."""
        is_image = [token in self._image_token_ids for token in prompt]
        if "mm_token_type_ids" in prompts:
            is_image = [a or bool(b) for a, b in zip(is_image, prompts["mm_token_type_ids"][row, :length].tolist())]
        if not any(is_image):
            return None
        start = is_image.index(True)
        stop = len(is_image) - is_image[::-1].index(True)
        # Delimiters such as <|vision_start|> / <|vision_end|> / <start_of_image> belong to the image too
        while start > 0 and prompt[start - 1] in self._delimiter_ids:
            start -= 1
        while stop < len(prompt) and prompt[stop] in self._delimiter_ids:
            stop += 1
        return start, stop


def _image_token_ids(processor) -> set[int]:
    ids = set()
    for owner in (processor, processor.tokenizer):
        for name in ("image_token_id", "video_token_id"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                ids.add(value)
    if not ids:
        raise ValueError(
            f"{type(processor).__name__} has no `image_token_id`: VisionPreferenceCollator cannot tell which tokens "
            "belong to images, and so cannot guarantee that truncation keeps them."
        )
    return ids


def _delimiter_candidate_ids(tokenizer) -> set[int]:
    """Added special tokens that may wrap an image placeholder (never bos/eos/pad, which frame whole turns)."""
    structural = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return (added | set(tokenizer.all_special_ids)) - structural


def _normalise(example: dict[str, Any], row: int) -> dict[str, Any]:
    """A shallow copy with an ``images`` list (the collator never mutates the dataset's rows)."""
    for column in ("prompt", "chosen", "rejected"):
        if column not in example:
            raise PreferenceDataError(
                expected="a prompt, chosen and rejected column",
                got=f"no {column!r} key (keys: {sorted(example)})",
                row=row,
                column=column,
            )
    example = dict(example)
    if "images" in example:
        images = example["images"]
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    elif "image" in example:
        image = example.pop("image")
        images = [] if image is None else [image]
    else:
        raise PreferenceDataError(
            expected="an 'images' list or an 'image'",
            got=f"neither key (keys: {sorted(example)})",
            row=row,
            column="images",
            hint="For text-only rows in a vision dataset use images=[] (or image=None).",
        )
    for index, image in enumerate(images):
        if image is None:
            raise PreferenceDataError(expected="an image", got=f"None at position {index}", row=row, column="images")
    example["images"] = images
    return example


def _render(example: dict[str, Any], processor) -> tuple[str, str, str]:
    """The prompt, chosen and rejected text of one row, the chat template applied to conversational rows."""
    if not is_conversational(example):
        return example["prompt"], example["chosen"], example["rejected"]
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    messages = {
        "prompt": prepare_multimodal_messages(example["prompt"], images=example["images"]),
        "chosen": prepare_multimodal_messages(example["chosen"]),
        "rejected": prepare_multimodal_messages(example["rejected"]),
    }
    if "chat_template_kwargs" in example:
        messages["chat_template_kwargs"] = example["chat_template_kwargs"]
    rendered = apply_chat_template(messages, processor, tools=tools)
    return rendered["prompt"], rendered["chosen"], rendered["rejected"]
