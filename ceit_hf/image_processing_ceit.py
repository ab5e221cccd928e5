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
"""CeiT image processors (torchvision and PIL backends). Hub remote code: imports only numpy, torch, transformers."""

import os

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import PIL, ChannelDimension, PILImageResampling, is_pil_image, load_image
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import auto_docstring, logging
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


logger = logging.get_logger(__name__)
ARRAYS = (np.ndarray, torch.Tensor)
EXPECTED_INPUT = (
    "a PIL image, a 2-D or 3-D array or tensor with 1, 3 or 4 channels or a 4-D batch, a path, URL or list"
)


def _sizes_from_user(kwargs: dict) -> dict:
    """Official pairing: a `crop_size` alone brings the resize `int(256 / 224 * crop)`; a `size` alone is the crop."""
    if kwargs.get("crop_size") is not None and kwargs.get("size") is None:
        crop = get_size_dict(kwargs["crop_size"], param_name="crop_size")
        kwargs["size"] = {"shortest_edge": int(256 / 224 * max(crop["height"], crop["width"]))}
    elif kwargs.get("size") is not None and kwargs.get("crop_size") is None:
        size = get_size_dict(kwargs["size"], default_to_square=False)
        kwargs["crop_size"] = size.get("shortest_edge") or {"height": size["height"], "width": size["width"]}
    return kwargs


def _channel_format(shape: tuple[int, ...]) -> ChannelDimension | None:
    # a 3- or 4-entry end wins over a 1-entry one (a one-pixel-high RGB image is channels-last), else channels first
    if shape[0] in (3, 4) or (shape[0] == 1 and shape[-1] not in (3, 4)):
        return ChannelDimension.FIRST
    return ChannelDimension.LAST if shape[-1] in (1, 3, 4) else None


def _flatten(images) -> list:
    if isinstance(images, str):  # decoded by Pillow in its own mode (transformers' loaders convert it to RGB)
        is_file = os.path.isfile(images)
        try:
            return [PIL.ImageOps.exif_transpose(PIL.Image.open(images) if is_file else load_image(images))]
        except Exception as error:
            problem = f"the file {images!r} is damaged, truncated or not an image"
            if not is_file:
                problem = f"expected a path to an image file, an http(s) URL or base64 data, got {images!r}"
            raise ValueError(f"Could not load an image: {problem} ({type(error).__name__}: {error}).") from error
    if not (isinstance(images, (list, tuple)) or (isinstance(images, ARRAYS) and images.ndim == 4)):
        return [images]
    if len(images) == 0:
        raise ValueError(f"Got an empty {type(images).__name__} of images. Expected {EXPECTED_INPUT}.")
    return [image for item in images for image in _flatten(item)]


def _problem(image) -> str | None:
    if is_pil_image(image):
        try:
            image.load()  # a file opened lazily fails here when damaged or truncated
        except Exception as error:
            return f"cannot be decoded, its file is damaged or truncated ({type(error).__name__}: {error})"
        return "is empty" if min(image.size) == 0 else None
    if not isinstance(image, ARRAYS):
        return "is not an image"
    if not str(image.dtype).removeprefix("torch.").startswith(("int", "uint", "float", "bfloat")):
        return f"has dtype {image.dtype}, which does not hold pixel values (expected integer or floating-point)"
    if image.ndim not in (2, 3):
        return f"has {image.ndim} dimension(s)"
    if min(image.shape) == 0:
        return "is empty"
    if image.ndim == 3 and _channel_format(image.shape) is None:
        return "has no channel axis of 1, 3 or 4 entries (grayscale, RGB or RGBA) at either end"


class CeiTImageProcessingMixin:
    """Both backends: the official transform's defaults and rounding, inputs checked and converted alike."""

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
            name = "image_processing_ceit.CeiTImageProcessor"
            output["auto_map"] = {"AutoImageProcessor": {"torchvision": name, "pil": f"{name}Pil"}}
        return output

    def preprocess(self, images, *args, **kwargs: Unpack[ImagesKwargs]):
        return super().preprocess(images, *args, **_sizes_from_user(kwargs))

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        flat = _flatten(images)
        for index, image in enumerate(flat):
            if problem := _problem(image):
                where = "The input" if len(flat) == 1 else f"Input {index} of the batch"
                got = f"of shape {tuple(image.shape)}" if isinstance(image, ARRAYS) else f"{image!r:.80}"
                raise ValueError(f"{where} {problem}: got {type(image).__name__} {got}. Expected {EXPECTED_INPUT}.")
        return flat

    def center_crop(self, image, size, **kwargs):
        # rounded offsets, as torchvision's CenterCrop (official) rounds; an image smaller than the crop is padded
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)
        top, left = round((height - size.height) / 2.0), round((width - size.width) / 2.0)
        return image[..., top : top + size.height, left : left + size.width]

    def process_image(self, image, *args, input_data_format=None, **kwargs):
        if is_pil_image(image) and image.mode.startswith("I;16"):  # Pillow's RGB conversion saturates 16-bit pixels
            image = np.asarray(image)
        if isinstance(image, np.ndarray):  # torch needs native byte order and positive strides
            image = torch.from_numpy(np.require(image, image.dtype.newbyteorder("="), ("C_CONTIGUOUS", "WRITEABLE")))
        if isinstance(image, torch.Tensor):  # uint8 and float32 kept, 16-bit scaled to 8 bits, other dtypes as float32
            image = image.detach()
            if image.dtype == torch.uint16:
                image = torch.round(image.to(torch.float32) / 257.0).to(torch.uint8)
            image = image if image.dtype == torch.uint8 else image.to(torch.float32)
            if image.ndim == 2:
                image, input_data_format = image[None], ChannelDimension.FIRST
            input_data_format = input_data_format or _channel_format(tuple(image.shape))
            if kwargs.get("do_rescale") and image.is_floating_point() and image.min() >= 0 and image.max() <= 1:
                logger.warning_once("Pixels in [0, 1] are rescaled as if on the 0-255 scale: pass `do_rescale=False`.")
            image = image.cpu().numpy() if self.backend == "pil" else image
        return super().process_image(image, *args, input_data_format=input_data_format, **kwargs)


@auto_docstring(custom_intro="CeiT's official evaluation transform (bicubic resize, center crop) on torchvision.")
class CeiTImageProcessor(CeiTImageProcessingMixin, TorchvisionBackend):
    pass


@auto_docstring(custom_intro="[`CeiTImageProcessor`] on transformers' PIL backend: Pillow resizes, as officially.")
class CeiTImageProcessorPil(CeiTImageProcessingMixin, PilBackend):
    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        # Pillow resamples 8-bit data: floats on the 0-255 scale become uint8 (transformers handles those in [0, 1])
        if np.issubdtype(image.dtype, np.floating) and 1.0 < image.max() <= 255.0 and image.min() >= 0.0:
            image = np.round(image).astype(np.uint8)
        return super().resize(image, size, resample=resample, **kwargs)


__all__ = ["CeiTImageProcessor", "CeiTImageProcessorPil"]
