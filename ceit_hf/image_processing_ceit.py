# Copyright 2026 The ceit_hf authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image processors for CeiT: the official evaluation transform (shorter side to `int(256 / 224 * crop)`, bicubic;
center crop; rescale; ImageNet normalisation) on transformers' torchvision backend (`CeiTImageProcessor`) and its PIL
backend (`CeiTImageProcessorPil`). Hub remote code: imports only numpy, torch and transformers.
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
from transformers.utils import auto_docstring, is_torch_tensor, logging


logger = logging.get_logger(__name__)

EXPECTED_INPUT = (
    "a PIL.Image.Image; a numpy array or torch tensor of shape (height, width), (height, width, channels) or "
    "(channels, height, width) with 1, 3 or 4 channels (or a 4-D batch of those); a path or URL of an image file; "
    "or a non-empty list of these"
)


def _sizes_from_user(kwargs: dict) -> dict:
    """The official pairing: a `crop_size` given alone resizes the shorter side to `int(256 / 224 * crop)`; a `size`
    given alone is also the output size."""
    size, crop_size = kwargs.get("size"), kwargs.get("crop_size")
    if crop_size is not None and size is None:
        crop = get_size_dict(crop_size, param_name="crop_size")
        kwargs["size"] = {"shortest_edge": int(256 / 224 * max(crop["height"], crop["width"]))}
    elif size is not None and crop_size is None:
        size = get_size_dict(size, default_to_square=False)
        side = size.get("shortest_edge")
        kwargs["crop_size"] = {"height": side or size["height"], "width": side or size["width"]}
    return kwargs


def _is_array(obj) -> bool:
    return isinstance(obj, np.ndarray) or is_torch_tensor(obj)


def _describe(obj) -> str:
    if _is_array(obj):
        return f"a {type(obj).__module__}.{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if is_pil_image(obj):
        return f"a PIL image of mode {obj.mode} and size {obj.size}"
    text = repr(obj)
    return f"{type(obj).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _channel_format(shape: tuple[int, ...]) -> ChannelDimension | None:
    """The channel axis of a 3-D image: a 3- or 4-entry end wins over a 1-entry one (a one-pixel-high RGB image
    `(1, width, 3)` is channels-last); when both qualify equally, channels come first (transformers' convention)."""
    first, last = shape[0], shape[-1]
    if first in (3, 4) or (first == 1 and last not in (3, 4)):
        return ChannelDimension.FIRST
    return ChannelDimension.LAST if last in (1, 3, 4) else None


def _load_image(source: str):
    """The image at a path, URL or base64 string, decoded in full with its mode kept (transformers' loaders convert
    to RGB first, losing transparency and 16-bit pixels, and its torchvision decoder crashes on some damaged PNGs)."""
    from transformers.image_utils import PIL

    is_file = os.path.isfile(source)
    try:
        image = PIL.ImageOps.exif_transpose(PIL.Image.open(source) if is_file else load_image(source))
        image.load()
    except Exception as error:
        problem = (
            f"the file {source!r} is damaged, truncated or not an image"
            if is_file
            else f"expected a path to an image file, an http(s) URL or a base64-encoded image, got {_describe(source)}"
        )
        raise ValueError(f"Could not load an image: {problem} ({type(error).__name__}: {error}).") from error
    return image


def _check_image(image, position: str) -> None:
    """A `ValueError` naming `image` unless it is a decodable PIL image or a 2-D/3-D array of pixel values."""
    if is_pil_image(image):
        if min(image.size) == 0:
            raise ValueError(f"{position} is empty: got {_describe(image)}. Expected {EXPECTED_INPUT}.")
        try:
            image.load()  # a file opened lazily fails here when damaged or truncated
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
    if image.ndim == 3 and _channel_format(tuple(image.shape)) is None:
        raise ValueError(
            f"{position} has no channel axis of 1, 3 or 4 entries (grayscale, RGB or RGBA) at either end: got "
            f"{_describe(image)}. Expected {EXPECTED_INPUT}."
        )


def _to_8bit_or_float(image):
    """uint8 and float32 pixels as they are, 16-bit ones scaled to 8 bits, other dtypes as float32 of equal value
    (so on uint8's 0-255 scale): what both backends resize."""
    if isinstance(image, np.ndarray):
        # torch.from_numpy needs native byte order and positive strides, and warns on read-only arrays
        image = np.require(image, dtype=image.dtype.newbyteorder("="), requirements=("C_CONTIGUOUS", "WRITEABLE"))
        if image.dtype == np.uint16:
            return np.round(image / 257.0).astype(np.uint8)
        return image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
    image = image.detach()
    if image.dtype == torch.uint16:
        return torch.round(image.to(torch.float32) / 257.0).to(torch.uint8)
    return image if image.dtype in (torch.uint8, torch.float32) else image.to(torch.float32)


class CeiTImageProcessingMixin:
    """What both CeiT processors add to their backend: the official defaults and resize/crop pairing, torchvision's
    center-crop rounding (the official pipeline's), and inputs checked and converted alike.

    Inputs become RGB (grayscale repeated, transparency composited onto white, palette/CMYK through Pillow, 16-bit
    images scaled to 8 bits). Integer and floating-point arrays hold values on the 0-255 scale, like uint8 ones: pass
    `do_rescale=False` for floats already in [0, 1]. A path gives the pixels of its file's PIL image; anything that
    is not an image, and a damaged or truncated file, raises a `ValueError` naming it.
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
        if self._auto_class is not None:  # `register_for_auto_class` writes one class: keep `backend="pil"` working
            output["auto_map"] = {"AutoImageProcessor": dict(_AUTO_MAP)}
        return output

    def preprocess(self, images, *args, **kwargs: Unpack[ImagesKwargs]):
        """`pixel_values` `(batch_size, 3, crop_height, crop_width)`; a `size` or `crop_size` given alone brings its
        partner as at construction."""
        return super().preprocess(images, *args, **_sizes_from_user(kwargs))

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        if images is None:
            raise ValueError(f"No image was given (got None). Expected {EXPECTED_INPUT}.")
        flat = self._flatten_images(images)
        for index, image in enumerate(flat):
            _check_image(image, "The input" if len(flat) == 1 else f"Input {index} of the batch")
        return flat

    def _flatten_images(self, images) -> list:
        if isinstance(images, (list, tuple)):
            if not images:
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
        # torchvision's CenterCrop (the official pipeline) rounds the offsets to the nearest integer, not down;
        # images smaller than the crop are left to the backend, which pads them.
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)
        top, left = int(round((height - size.height) / 2.0)), int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]

    def process_image(self, image, *args, input_data_format=None, do_rescale=None, **kwargs):
        if is_pil_image(image) and image.mode.startswith("I;16"):
            image = np.asarray(image)
        if _is_array(image):
            image = _to_8bit_or_float(image)
            if image.ndim == 2:
                image, input_data_format = image[None], ChannelDimension.FIRST
            input_data_format = input_data_format or _channel_format(tuple(image.shape))
            floating = image.is_floating_point() if is_torch_tensor(image) else image.dtype == np.float32
            if do_rescale and floating and image.min() >= 0 and image.max() <= 1:
                logger.warning_once(
                    "Floating-point pixel values in [0, 1] are being rescaled by `rescale_factor` as if they were on "
                    "the 0-255 scale. If the images are already scaled to [0, 1], pass `do_rescale=False`."
                )
        return super().process_image(
            image, *args, input_data_format=input_data_format, do_rescale=do_rescale, **kwargs
        )


@auto_docstring(
    custom_intro="""
    CeiT image processor on transformers' torchvision backend (batched, on an accelerator when `device` is given).
    The defaults are the official evaluation transform: shorter side to 256 pixels (bicubic), center crop 224x224,
    rescale by 1/255, ImageNet mean/std; transformers' usual image-processor arguments apply at construction or call
    time. A `crop_size` given alone brings the official resize, `int(256 / 224 * crop)` (438 for 384); a `size`
    given alone is also the output size.

    ```python
    >>> from PIL import Image
    >>> from ceit_hf import CeiTImageProcessor
    >>> CeiTImageProcessor()(Image.new("RGB", (640, 480)), return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 3, 224, 224])
    ```
    """
)
class CeiTImageProcessor(CeiTImageProcessingMixin, TorchvisionBackend):
    pass


@auto_docstring(
    custom_intro="""
    CeiT image processor on transformers' PIL backend: resizes with Pillow one image at a time, like the official
    pipeline, and needs no torchvision. The same arguments, inputs and outputs as [`CeiTImageProcessor`], up to
    resampling differences between Pillow and torchvision.
    """
)
class CeiTImageProcessorPil(CeiTImageProcessingMixin, PilBackend):
    def process_image(self, image, *args, **kwargs):
        if is_torch_tensor(image):  # this backend works on numpy arrays
            image = image.detach().cpu().numpy()
        return super().process_image(image, *args, **kwargs)

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        # Pillow resamples 8-bit data: floats on the 0-255 scale are rounded to uint8 first (transformers already
        # goes through uint8 for floats in [0, 1]).
        if np.issubdtype(image.dtype, np.floating) and 1.0 < image.max() <= 255.0 and image.min() >= 0.0:
            image = np.round(image).astype(np.uint8)
        return super().resize(image, size, resample=resample, **kwargs)


_AUTO_MAP = {
    "torchvision": "image_processing_ceit.CeiTImageProcessor",
    "pil": "image_processing_ceit.CeiTImageProcessorPil",
}

__all__ = ["CeiTImageProcessor", "CeiTImageProcessorPil"]
