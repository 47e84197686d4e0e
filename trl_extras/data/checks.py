"""Checks of one value (a completion, a list of messages, an image): each returns quietly or raises `Invalid`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from io import BytesIO
from typing import Any

import PIL.Image
from datasets import Image, LargeList, List, Value

from .errors import Invalid

ROLES = ("system", "user", "assistant", "tool")
CONTENT_TYPES = ("text", "image")
_CLIP = 60


def show(value: Any) -> str:
    """A short, unambiguous rendering of a bad value for an error message."""
    if value is None:
        return "None"
    if isinstance(value, str):
        if not value:
            return "'' (empty)"
        return f"{_clip(repr(value))} (blank)" if not value.strip() else _clip(repr(value))
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes {_clip(repr(bytes(value[:16])))}"
    if isinstance(value, (list, tuple, dict)) and not value:
        return f"{value!r} (empty {type(value).__name__})"
    if isinstance(value, PIL.Image.Image):
        return f"a {value.width}x{value.height} {value.mode} PIL image"
    return f"{_clip(repr(value))} ({type(value).__name__})"


def _clip(text: str, limit: int = _CLIP) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# text


def check_text(value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("a non-empty string", show(value))


def check_messages(value: Any) -> None:
    """A conversation in TRL's format: a non-empty list of `{"role", "content"}` dicts."""
    if not isinstance(value, list) or not value:
        raise Invalid("a non-empty list of messages", show(value))
    for index, message in enumerate(value):
        try:
            _check_message(message)
        except Invalid as err:
            raise Invalid(err.expected, f"{err.got} in message {index}") from None


def check_text_or_messages(value: Any) -> None:
    if isinstance(value, list):
        check_messages(value)
    elif isinstance(value, str):
        check_text(value)
    else:
        raise Invalid("a non-empty string or a list of messages", show(value))


def text_check_for(feature: Any) -> Callable[[Any], None]:
    """The sharpest check for a column's type: strings, conversations, or either when the type says nothing."""
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return check_text
    if isinstance(feature, (List, LargeList)):
        return check_messages
    return check_text_or_messages


def _check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise Invalid("each message to be a dict with 'role' and 'content'", show(message))
    if message.get("role") not in ROLES:
        raise Invalid(f"a message role in {ROLES}", f"role {show(message.get('role'))}")
    content = message.get("content")
    if content is None and message.get("tool_calls"):
        return  # an assistant turn that only calls tools
    if isinstance(content, str):
        if not content.strip():
            raise Invalid("non-empty message content", show(content))
    elif isinstance(content, list) and content:
        for part in content:
            _check_content_part(part)
    else:
        raise Invalid("message content as a string or a non-empty list of content parts", show(content))


def _check_content_part(part: Any) -> None:
    if not isinstance(part, dict) or part.get("type") not in CONTENT_TYPES:
        raise Invalid(f"content parts of type {CONTENT_TYPES}", show(part))
    if part["type"] == "text" and (not isinstance(part.get("text"), str) or not part["text"].strip()):
        raise Invalid("non-empty message content", f"text part {show(part.get('text'))}")


# numbers


def check_number(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise Invalid("a number", show(value))


# images


def image_size(value: Any, *, decode: bool = True) -> tuple[int, int] | None:
    """Check one image and return its (width, height) when it was opened.

    Accepts a PIL image, a path, encoded bytes, or the `{"bytes", "path"}` dict that a `datasets.Image` column stores.
    With `decode=True` the image is fully decoded once (so a truncated file is caught) and closed again; with
    `decode=False` only its presence, type and, for a local path, existence are checked. URLs are not fetched.
    """
    if isinstance(value, PIL.Image.Image):
        return value.size
    if isinstance(value, dict) and {"bytes", "path"} <= value.keys():  # raw storage of a `datasets.Image` column
        value = value["bytes"] if value["bytes"] is not None else value["path"]
    if value is None:
        raise Invalid("an image", "None (missing)")
    if isinstance(value, str):
        if "://" in value:
            return None  # remote: checked when it is downloaded
        if not os.path.isfile(value):
            raise Invalid("an existing image file", f"{value!r} (file not found)")
        return _decode(value, repr(value)) if decode else None
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise Invalid("a readable image", "0 bytes")
        return _decode(BytesIO(value), f"{len(value)} bytes") if decode else None
    raise Invalid("an image (a PIL image, a file path or encoded bytes)", show(value))


def _decode(source: Any, shown: str) -> tuple[int, int]:
    try:
        with PIL.Image.open(source) as image:
            image.load()
            return image.size
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... depending on the format
        reason = "PIL cannot identify the image format" if isinstance(err, PIL.UnidentifiedImageError) else str(err)
        raise Invalid("a readable image", f"{shown} ({_clip(reason, 80)})") from None


def check_image(value: Any, *, decode: bool = True) -> None:
    image_size(value, decode=decode)


def check_images(value: Any, *, required: bool = False, decode: bool = True) -> None:
    """A list of images (the `images` column); `required` demands at least one."""
    if not isinstance(value, list):
        raise Invalid("a list of images", show(value))
    if required and not value:
        raise Invalid("at least one image (images='required')", show(value))
    for index, image in enumerate(value):
        try:
            image_size(image, decode=decode)
        except Invalid as err:
            raise Invalid(err.expected, f"{err.got} at image {index}") from None


def image_count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def as_image_feature(feature: Any, *, decode: bool = True) -> Any:
    """The `datasets.Image` version of an image column's feature: paths and bytes (or lists of them) become
    `Image(decode=decode)`; other features are returned as they are."""
    if isinstance(feature, Image):
        return Image(mode=feature.mode, decode=decode)
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string", "binary", "large_binary"):
        return Image(decode=decode)
    if isinstance(feature, (List, LargeList)):
        return type(feature)(as_image_feature(feature.feature, decode=decode))
    return feature
