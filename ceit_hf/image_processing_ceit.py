# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Image processors for CeiT: the official evaluation transform (shorter side to `int(256 / 224 * crop)`, bicubic;
center crop; rescale; ImageNet normalisation) on transformers' torchvision backend (`CeiTImageProcessor`) and its PIL
backend (`CeiTImageProcessorPil`, Pillow resizing like the official pipeline). Hub remote code: imports only numpy,
torch and transformers.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    is_pil_image,
    load_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import is_torch_tensor, logging


logger = logging.get_logger(__name__)

EXPECTED_INPUT = (
    "a PIL.Image.Image; a numpy array or torch tensor of shape (height, width), (height, width, channels) or "
    "(channels, height, width) with 1, 3 or 4 channels (or a 4-D batch of those); a path or URL of an image file; "
    "or a non-empty list of these"
)


def _sizes_from_user(kwargs: dict) -> dict:
    """The official pairing of resize and crop sizes: a `crop_size` given alone resizes the shorter side to
    `int(256 / 224 * crop)`; a `size` given alone is also the output size (crop to it)."""
    size, crop_size = kwargs.get("size"), kwargs.get("crop_size")
    if crop_size is not None and size is None:
        crop = get_size_dict(crop_size, param_name="crop_size")
        kwargs["size"] = {"shortest_edge": int(256 / 224 * max(crop["height"], crop["width"]))}
    elif size is not None and crop_size is None:
        size = get_size_dict(size, default_to_square=False)
        side = size.get("shortest_edge")
        kwargs["crop_size"] = {"height": side, "width": side} if side else {"height": size["height"], "width": size["width"]}
    return kwargs


def _describe(obj) -> str:
    """A short description of `obj` for error messages."""
    if isinstance(obj, np.ndarray) or is_torch_tensor(obj):
        return f"a {type(obj).__module__}.{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if is_pil_image(obj):
        return f"a PIL image of mode {obj.mode} and size {obj.size}"
    text = repr(obj)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{type(obj).__name__} {text}"


def _is_array(obj) -> bool:
    return isinstance(obj, np.ndarray) or is_torch_tensor(obj)


def _infer_channel_format(shape: tuple[int, ...]) -> ChannelDimension | None:
    """
    The channel axis of a 3-D image shape, or `None` when neither end has 1, 3 or 4 entries.

    A 3- or 4-entry axis wins over a 1-entry one, so a one-pixel-high RGB image `(1, width, 3)` is read as
    channels-last; when both ends qualify equally, channels come first (transformers' convention).
    """
    first, last = shape[0], shape[-1]
    if first in (3, 4) or (first == 1 and last not in (3, 4)):
        return ChannelDimension.FIRST
    if last in (1, 3, 4):
        return ChannelDimension.LAST
    return None


def _load_image(source: str):
    """
    The image at a path, http(s) URL or base64 string, as a fully decoded PIL image (a damaged or truncated file fails
    here, with a `ValueError`). Files keep their mode, so transparency and 16-bit pixels are handled as for PIL inputs
    (transformers' own loaders convert to RGB first, and its torchvision decoder crashes on some damaged PNGs).
    """
    from transformers.image_utils import PIL  # Pillow, as transformers imports it

    is_file = os.path.isfile(source)
    try:
        image = PIL.Image.open(source) if is_file else load_image(source)
        image = PIL.ImageOps.exif_transpose(image)
        image.load()
    except Exception as error:
        if is_file:
            problem = f"the file {source!r} is damaged, truncated or not an image"
        else:
            problem = f"expected a path to an image file, an http(s) URL or a base64-encoded image, got {_describe(source)}"
        raise ValueError(f"Could not load an image: {problem} ({type(error).__name__}: {error}).") from error
    return image


def _check_image(image, position: str) -> None:
    """Raise a `ValueError` naming `image` unless it is a PIL image or a 2-D/3-D array of pixel values."""
    if is_pil_image(image):
        if min(image.size) == 0:
            raise ValueError(f"{position} is empty: got {_describe(image)}. Expected {EXPECTED_INPUT}.")
        try:
            image.load()  # images opened from files decode lazily: a damaged or truncated file fails here
        except Exception as error:
            raise ValueError(
                f"{position} cannot be decoded, its file is damaged or truncated: got {_describe(image)} "
                f"({type(error).__name__}: {error})."
            ) from error
        return
    if not _is_array(image):
        raise ValueError(f"{position} is not an image: got {_describe(image)}. Expected {EXPECTED_INPUT}.")
    if isinstance(image, np.ndarray):
        numeric = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    else:
        numeric = image.dtype != torch.bool and not image.is_complex()
    if not numeric:
        raise ValueError(
            f"{position} has dtype {image.dtype}, which does not hold pixel values: got {_describe(image)}. "
            "Expected integer (uint8 for 8-bit images) or floating-point pixels."
        )
    if image.ndim not in (2, 3):
        raise ValueError(
            f"{position} has {image.ndim} dimension(s): got {_describe(image)}. Expected {EXPECTED_INPUT}."
        )
    if min(image.shape) == 0:
        raise ValueError(f"{position} is empty: got {_describe(image)}. Expected {EXPECTED_INPUT}.")
    if image.ndim == 3 and _infer_channel_format(tuple(image.shape)) is None:
        raise ValueError(
            f"{position} has no channel axis of 1, 3 or 4 entries (grayscale, RGB or RGBA) at either end: got "
            f"{_describe(image)}. Expected {EXPECTED_INPUT}."
        )


def _to_8bit_or_float(image):
    """
    Bring array pixels to a dtype both backends resize: uint8 and float32 pass through; 16-bit unsigned pixels
    (16-bit PNG/TIFF data) are scaled to 8 bits; other integer and floating-point dtypes become float32 with their
    values unchanged (so on the same 0-255 scale as uint8).
    """
    if isinstance(image, np.ndarray):
        # torch.from_numpy needs native byte order and positive strides, and warns on read-only arrays.
        image = np.require(image, dtype=image.dtype.newbyteorder("="), requirements=("C_CONTIGUOUS", "WRITEABLE"))
        if image.dtype == np.uint16:
            return np.round(image / 257.0).astype(np.uint8)
        return image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
    image = image.detach()
    if image.dtype == torch.uint16:
        return torch.round(image.to(torch.float32) / 257.0).to(torch.uint8)
    return image if image.dtype in (torch.uint8, torch.float32) else image.to(torch.float32)


def _looks_rescaled(image) -> bool:
    """Whether `image` holds floating-point pixels within [0, 1], i.e. is probably scaled already."""
    if is_torch_tensor(image):
        return image.is_floating_point() and image.min() >= 0 and image.max() <= 1
    return np.issubdtype(image.dtype, np.floating) and image.min() >= 0 and image.max() <= 1


class CeiTImageProcessingMixin:
    """
    What the two CeiT image processors share: the official evaluation defaults, the resize size that follows from
    the crop size, and input checking and conversion done the same way for both backends.

    Inputs are converted to RGB: grayscale images are repeated over three channels, images with transparency are
    composited onto white, palette and CMYK images go through Pillow's conversion, and 16-bit images (Pillow modes
    `I;16*`, uint16 arrays) are scaled to 8 bits. Integer and floating-point arrays are taken to hold values on the
    0-255 scale, like uint8 ones; pass `do_rescale=False` for floating-point pixels already in [0, 1]. A path gives
    the same pixels as the PIL image of its file; damaged or truncated files raise a `ValueError`.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[ImagesKwargs]):
        super().__init__(**_sizes_from_user(kwargs))

    def to_dict(self):
        output = super().to_dict()
        if self._auto_class is not None:
            # `register_for_auto_class` writes one class; one entry per backend keeps `backend="pil"` working.
            output["auto_map"] = {"AutoImageProcessor": dict(_AUTO_MAP)}
        return output

    def preprocess(self, images, *args, **kwargs: Unpack[ImagesKwargs]):
        """Preprocess images into `pixel_values` `(batch_size, 3, crop_height, crop_width)`; a `size` or `crop_size`
        given alone brings its partner as at construction."""
        return super().preprocess(images, *args, **_sizes_from_user(kwargs))

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        """
        Flatten `images` (one image, a 4-D batch, or a possibly nested list of these) into a list of single images,
        loading paths and URLs, and raise a `ValueError` saying what was received for anything that is not an image.
        """
        if images is None:
            raise ValueError(f"No image was given (got None). Expected {EXPECTED_INPUT}.")
        flat_images = self._flatten_images(images)
        for index, image in enumerate(flat_images):
            _check_image(image, "The input" if len(flat_images) == 1 else f"Input {index} of the batch")
        return flat_images

    def _flatten_images(self, images) -> list:
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError(f"Got an empty {type(images).__name__} of images. Expected {EXPECTED_INPUT}.")
            return [image for item in images for image in self._flatten_images(item)]
        if isinstance(images, str):
            return [_load_image(images)]
        if _is_array(images) and images.ndim == 4:
            if len(images) == 0:
                raise ValueError(f"Got an empty batch: {_describe(images)}. Expected {EXPECTED_INPUT}.")
            return list(images)
        return [images]

    def center_crop(self, image, size, **kwargs):
        """
        Center crop channels-first `image` to `(size.height, size.width)` with the offsets of torchvision's
        `CenterCrop` (used by the official pipeline), which rounds them to the nearest integer rather than down.
        Images smaller than the crop are left to the backend, which pads them.
        """
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]

    def process_image(self, image, *args, input_data_format=None, do_rescale=None, **kwargs):
        """
        Convert one checked image to the backend's channels-first format (see the class docstring for how modes and
        dtypes are handled).
        """
        if is_pil_image(image) and image.mode.startswith("I;16"):
            image = np.asarray(image)
        if _is_array(image):
            image = _to_8bit_or_float(image)
            if image.ndim == 2:
                image = image[None]
                input_data_format = ChannelDimension.FIRST
            elif input_data_format is None:
                input_data_format = _infer_channel_format(tuple(image.shape))
            if do_rescale and _looks_rescaled(image):
                logger.warning_once(
                    "Floating-point pixel values in [0, 1] are being rescaled by `rescale_factor` as if they were on "
                    "the 0-255 scale. If the images are already scaled to [0, 1], pass `do_rescale=False`."
                )
        return super().process_image(
            image, *args, input_data_format=input_data_format, do_rescale=do_rescale, **kwargs
        )


class CeiTImageProcessor(CeiTImageProcessingMixin, TorchvisionBackend):
    r"""
    CeiT image processor on transformers' torchvision backend (batched, on an accelerator when `device` is given).

    The defaults are the official evaluation transform: shorter side to 256 pixels (bicubic), center crop 224x224,
    rescale by 1/255, ImageNet mean/std. It takes transformers' usual image-processor arguments (`do_resize`,
    `size`, `resample`, `do_center_crop`, `crop_size`, `do_rescale`, `rescale_factor`, `do_normalize`,
    `image_mean`, `image_std`, `do_convert_rgb`) at construction or call time. A `crop_size` given alone brings
    the official resize, `int(256 / 224 * crop)` (438 for 384); a `size` given alone is also the output size.

    Example:

    ```python
    >>> from PIL import Image
    >>> from ceit_hf import CeiTImageProcessor
    >>> CeiTImageProcessor()(Image.new("RGB", (640, 480)), return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 3, 224, 224])
    ```
    """


class CeiTImageProcessorPil(CeiTImageProcessingMixin, PilBackend):
    r"""
    CeiT image processor on transformers' PIL backend: resizes with Pillow one image at a time, like the official
    pipeline, and needs no torchvision.

    It takes the same arguments and inputs as [`CeiTImageProcessor`] and gives the same outputs up to resampling
    differences between Pillow and torchvision.
    """

    def process_image(self, image, *args, **kwargs):
        """Convert one checked image to a channels-first numpy array."""
        if is_torch_tensor(image):
            # Tensors may live on an accelerator or require grad; this backend works on numpy arrays.
            image = image.detach().cpu().numpy()
        return super().process_image(image, *args, **kwargs)

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        """
        Resize with Pillow. Pillow resamples 8-bit data, so floating-point pixels on the 0-255 scale are rounded to
        uint8 first (transformers already goes through uint8 for floating-point pixels in [0, 1]).
        """
        if np.issubdtype(image.dtype, np.floating) and 1.0 < image.max() <= 255.0 and image.min() >= 0.0:
            image = np.round(image).astype(np.uint8)
        return super().resize(image, size, resample=resample, **kwargs)


_AUTO_MAP = {
    "torchvision": "image_processing_ceit.CeiTImageProcessor",
    "pil": "image_processing_ceit.CeiTImageProcessorPil",
}

__all__ = ["CeiTImageProcessor", "CeiTImageProcessorPil"]
