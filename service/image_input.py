"""Uploaded image bytes -> the captioner's input tensor, or a 4xx that says what was wrong.

Only PNG and JPEG are accepted (415 otherwise, including bytes that are no image at all); an empty file, or one
that starts like a PNG or JPEG and cannot be read as one, is 422; an image with more than `max_pixels` pixels is
413, checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io

import torch
from PIL import Image, UnidentifiedImageError

from beem.captioning.captioner import image_tensor
from service.errors import InputValidationError, PayloadTooLargeError, UnsupportedMediaError

ACCEPTED_FORMATS = ("PNG", "JPEG")
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # what a PNG and a JPEG file start with


def decode_base64(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,<payload>
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InputValidationError(f"image: not valid base64 ({error})") from error


def image_from_bytes(data: bytes, max_pixels: int) -> torch.Tensor:
    """(3, 224, 224) in [-1, 1]. Blocking (decoding a large JPEG takes tens of ms): run it off the event loop."""
    if not data:
        raise InputValidationError("image: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise UnsupportedMediaError(f"image: {image.format} is not accepted; send PNG or JPEG")
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(f"image: {width}x{height} pixels; the limit is {max_pixels} pixels")
            image.load()
            return image_tensor(image)
    except UnidentifiedImageError as error:
        if data.startswith(SIGNATURES):  # it says it is a PNG or JPEG, but is not readable as one
            raise InputValidationError("image: damaged or truncated file (unreadable after its signature)") from error
        raise UnsupportedMediaError("image: not a PNG or JPEG file") from error
    except Image.DecompressionBombError as error:
        raise PayloadTooLargeError(f"image: too many pixels ({error})") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputValidationError(f"image: damaged or truncated file ({error})") from error
