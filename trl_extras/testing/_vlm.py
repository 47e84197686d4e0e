"""Tiny vision-language models (Llava, Qwen2-VL) and their processors.

Example:

```python
from transformers import AutoModelForImageTextToText
from trl_extras.testing import build_tiny_vlm
from trl_extras.testing._vlm import load_tiny_vlm_processor

path = build_tiny_vlm("/tmp/tiny-vlm", family="llava")  # or family="qwen2_vl"
model = AutoModelForImageTextToText.from_pretrained(path)
processor = load_tiny_vlm_processor(path)  # AutoProcessor.from_pretrained(path), see below for Qwen2-VL
```

Both families are ones TRL's ``DPOTrainer`` handles on its vision path (``DataCollatorForVisionPreference``). The
processor's tokenizer is the kit's byte-level BPE tokenizer (``build_tiny_tokenizer``) plus the family's image
tokens, with a ChatML template that renders ``{"type": "image"}`` content parts as the image placeholder, so TRL's
conversational vision datasets (``prompt``/``chosen``/``rejected`` messages plus an ``images`` column) work as is.

torchvision is not needed. The image processors use transformers' PIL backend, which ``AutoImageProcessor`` picks
when torchvision is missing. Llava then loads with plain ``AutoProcessor.from_pretrained``. Qwen2-VL's processor
also owns a video processor that transformers 5 only builds with torchvision, and ``AutoProcessor`` refuses the
processor without it (huggingface/transformers#48558): ``load_tiny_vlm_processor`` builds the stock
``Qwen2VLProcessor`` without the video part in that case. The saved checkpoint is a stock one either way.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from ._lm import BOS_TOKEN, EOS_TOKEN, build_tiny_tokenizer

__all__ = ["VLM_FAMILIES", "build_tiny_vlm", "load_tiny_vlm_processor", "vlm_chat_template"]

#: Families ``build_tiny_vlm`` can build.
VLM_FAMILIES = ("llava", "qwen2_vl")

# Image geometry. Llava resizes and centre-crops every image to 28x28; 28 / patch 7 = 4x4 patches, so 16 image tokens
# (CLIP's CLS feature is dropped). Qwen2-VL resizes to about 56x56 pixels keeping the aspect ratio (sides multiples
# of 28); a square image is 4x4 patches of 14, merged 2x2 into 4 image tokens, and `image_grid_thw` is (1, 4, 4).
_LLAVA_IMAGE_SIZE = 28
_LLAVA_PATCH_SIZE = 7
_QWEN_IMAGE_SIZE = 56
_QWEN_PATCH_SIZE = 14

# Text of the image placeholder the chat template writes for each ``{"type": "image"}`` part; the processor expands
# the image token in it to one token per image feature.
_IMAGE_PLACEHOLDER = {
    "llava": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}
_EXTRA_SPECIAL_TOKENS = {
    "llava": ["<image>"],
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}


def vlm_chat_template(image_placeholder: str) -> str:
    """ChatML template whose message contents may be strings or lists of ``text``/``image`` parts.

    Each ``{"type": "image"}`` part becomes ``image_placeholder``. Assistant turns sit in a ``{% generation %}`` block
    like the text template, so ``assistant_only_loss`` works too.
    """
    content = (
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image_placeholder + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
    )
    return (
        "{% for message in messages %}"
        "{{ '" + BOS_TOKEN + "' + message['role'] + '\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}" + content + "{{ '" + EOS_TOKEN + "' }}"
        "{% endgeneration %}"
        "{% else %}" + content + "{{ '" + EOS_TOKEN + "' }}{% endif %}"
        "{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + BOS_TOKEN + "assistant\n' }}{% endif %}"
    )


def _tokenizer(family: str):
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": _EXTRA_SPECIAL_TOKENS[family]})
    tokenizer.chat_template = vlm_chat_template(_IMAGE_PLACEHOLDER[family])
    return tokenizer


def _text_kwargs(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _build_llava(tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_LLAVA_IMAGE_SIZE,
        patch_size=_LLAVA_PATCH_SIZE,
        projection_dim=32,
    )
    num_image_tokens = (_LLAVA_IMAGE_SIZE // _LLAVA_PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**_text_kwargs(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": _LLAVA_IMAGE_SIZE}, crop_size={"height": _LLAVA_IMAGE_SIZE, "width": _LLAVA_IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_LLAVA_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS feature, dropped again by the "default" strategy
        chat_template=tokenizer.chat_template,
        image_token="<image>",
    )
    return LlavaForConditionalGeneration(config), processor


@functools.cache
def _image_only_qwen2_vl_processor_class():
    """A stock ``Qwen2VLProcessor`` that may have no video processor (see ``load_tiny_vlm_processor``)."""
    from transformers import Qwen2VLProcessor

    class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
        # transformers 5 builds Qwen2-VL's video processor on torchvision only, and `ProcessorMixin` refuses a
        # processor without it (huggingface/transformers#48558). Images never touch the video processor, so accept
        # `video_processor=None` and save the checkpoint as a stock `Qwen2VLProcessor`.
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def to_dict(self):
            output = super().to_dict()
            output["processor_class"] = "Qwen2VLProcessor"
            if output.get("video_processor") is None:
                output["video_processor"] = _qwen2_vl_video_processor_dict(self.image_processor)
            return output

        def save_pretrained(self, save_directory, **kwargs):
            if self.video_processor is not None:
                return super().save_pretrained(save_directory, **kwargs)
            from transformers.utils import PROCESSOR_NAME

            os.makedirs(save_directory, exist_ok=True)
            self.tokenizer.save_pretrained(save_directory)
            self.to_json_file(os.path.join(save_directory, PROCESSOR_NAME))
            return [os.path.join(save_directory, PROCESSOR_NAME)]

    # Importable (and so picklable) as `trl_extras.testing._vlm.Qwen2VLImageOnlyProcessor`, see `__getattr__`
    Qwen2VLImageOnlyProcessor.__module__ = __name__
    Qwen2VLImageOnlyProcessor.__qualname__ = "Qwen2VLImageOnlyProcessor"
    return Qwen2VLImageOnlyProcessor


def __getattr__(name: str):
    # The class is built on first use so that importing the kit does not import transformers' Qwen2-VL modules
    if name == "Qwen2VLImageOnlyProcessor":
        return _image_only_qwen2_vl_processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _qwen2_vl_video_processor_dict(image_processor) -> dict:
    # What a stock `Qwen2VLVideoProcessor` with the image processor's geometry saves, so that the checkpoint loads
    # with plain `AutoProcessor.from_pretrained` wherever torchvision is installed.
    return {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": dict(image_processor.size),
        "patch_size": image_processor.patch_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
        "merge_size": image_processor.merge_size,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
    }


def _build_qwen2_vl(tokenizer):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ids = tokenizer.convert_tokens_to_ids
    text_kwargs = _text_kwargs(tokenizer)
    # head_dim = 32 / 4 = 8, so the rotary half-dimension is 4, split over (temporal, height, width)
    text_kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    config = Qwen2VLConfig(
        text_config=text_kwargs,
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=32,  # output width of the patch merger = the language model's hidden size
            mlp_ratio=2,
            num_heads=4,
            patch_size=_QWEN_PATCH_SIZE,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    pixels = _QWEN_IMAGE_SIZE * _QWEN_IMAGE_SIZE  # min = max: every image is resized to 56x56
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=_QWEN_PATCH_SIZE, merge_size=2
    )
    processor = _image_only_qwen2_vl_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=tokenizer.chat_template,
    )
    return Qwen2VLForConditionalGeneration(config), processor


def load_tiny_vlm_processor(path: str | os.PathLike):
    """Load the processor of a ``build_tiny_vlm`` checkpoint, also where torchvision is not installed.

    This is ``AutoProcessor.from_pretrained(path)``, except for a Qwen2-VL checkpoint without torchvision: there
    transformers cannot build the (torchvision-only) video processor and refuses the processor, so we assemble the
    stock ``Qwen2VLProcessor`` from its tokenizer and PIL image processor and leave the video processor out. Pass
    the result to TRL trainers as ``processing_class``; it saves as a stock checkpoint.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import PROCESSOR_NAME, is_torchvision_available

    config_file = Path(path) / PROCESSOR_NAME
    processor_class = json.loads(config_file.read_text()).get("processor_class") if config_file.exists() else None
    if processor_class != "Qwen2VLProcessor" or is_torchvision_available():
        return AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    return _image_only_qwen2_vl_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=tokenizer.chat_template,
    )


def build_tiny_vlm(directory: str | os.PathLike, seed: int = 0, family: str = "llava") -> str:
    """Build a tiny vision-language model and its processor, save both to ``directory`` and return the path.

    Args:
        directory: Where to save the model, processor, tokenizer and generation config.
        seed: Seed for the random weights; the same seed gives the same weights.
        family: ``"llava"`` (``LlavaForConditionalGeneration``: CLIP vision tower, Llama text model, ``<image>``
            token, 28x28 images -> 16 image tokens) or ``"qwen2_vl"`` (``Qwen2VLForConditionalGeneration``:
            ``<|vision_start|><|image_pad|><|vision_end|>`` placeholder, images resized to 56x56 -> 4 image tokens,
            ``image_grid_thw`` per image).

    The model loads with ``AutoModelForImageTextToText.from_pretrained(path)``, the processor with
    ``load_tiny_vlm_processor(path)`` (which is ``AutoProcessor.from_pretrained(path)`` except for Qwen2-VL without
    torchvision, see the module docstring).
    """
    from transformers import GenerationConfig

    if family not in VLM_FAMILIES:
        raise ValueError(f"`family` must be one of {VLM_FAMILIES}, got {family!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(family)
    torch.manual_seed(seed)
    model, processor = (_build_llava if family == "llava" else _build_qwen2_vl)(tokenizer)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)
