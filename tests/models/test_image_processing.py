"""CeiT image processors: the official evaluation transform, input handling, errors, saving, Auto classes, pipeline."""

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision import transforms
from transformers import AutoImageProcessor, pipeline
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

import ceit_hf
from ceit_hf import (
    CeiTConfig,
    CeiTForImageClassification,
    CeiTImageProcessor,
    CeiTImageProcessorPil,
    image_processing_ceit,
)


PROCESSORS = [CeiTImageProcessor, CeiTImageProcessorPil]
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")}


@pytest.fixture(scope="module")
def photo(photos) -> Image.Image:
    return photos["flower.jpg"]


def official_transform(crop: int) -> transforms.Compose:
    """The evaluation transform of the official CeiT code (coeusguo/ceit, DeiT's `build_transform`)."""
    return transforms.Compose(
        [
            transforms.Resize(int((256 / 224) * crop), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )


def pixels(processor, images, **kwargs) -> torch.Tensor:
    return processor(images, return_tensors="pt", **kwargs)["pixel_values"]


def unnormalize(pixel_values: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] RGB."""
    return pixel_values * STD + MEAN


# ---------------------------------------------------------------------------------------------- defaults and sizes


@pytest.mark.parametrize("cls", PROCESSORS)
def test_defaults_are_the_official_evaluation_transform(cls):
    processor = cls()
    assert processor.size.shortest_edge == 256
    assert (processor.crop_size.height, processor.crop_size.width) == (224, 224)
    assert processor.resample == PILImageResampling.BICUBIC
    assert processor.rescale_factor == pytest.approx(1 / 255)
    assert tuple(processor.image_mean) == tuple(IMAGENET_DEFAULT_MEAN)
    assert tuple(processor.image_std) == tuple(IMAGENET_DEFAULT_STD)
    assert processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_normalize


@pytest.mark.parametrize("cls", PROCESSORS)
def test_resize_size_follows_the_crop_size(cls):
    assert cls(crop_size={"height": 384, "width": 384}).size.shortest_edge == 438
    assert cls(crop_size=384).size.shortest_edge == 438
    assert cls(crop_size={"height": 160, "width": 160}).size.shortest_edge == int(256 / 224 * 160)
    # A non-square crop takes its longer side, so the crop always fits inside the resized image.
    assert cls(crop_size={"height": 224, "width": 384}).size.shortest_edge == 438
    # An explicit size wins.
    assert cls(crop_size=384, size={"shortest_edge": 400}).size.shortest_edge == 400
    assert cls(size=300).size.shortest_edge == 300


@pytest.mark.parametrize("cls", PROCESSORS)
@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"size": 32}, (32, 32)),
        ({"size": {"shortest_edge": 48}}, (48, 48)),
        ({"size": {"height": 32, "width": 40}}, (32, 40)),
        ({"crop_size": 64}, (64, 64)),
        ({"size": 100, "crop_size": 64}, (64, 64)),
        ({}, (224, 224)),
    ],
)
def test_a_size_given_alone_decides_the_output_size(cls, photo, kwargs, shape):
    """`size` given without `crop_size` is the output size (no silent 224 crop), at construction and call time."""
    assert pixels(cls(**kwargs), photo).shape[-2:] == shape
    assert pixels(cls(), photo, **kwargs).shape[-2:] == shape


@pytest.mark.parametrize("cls", PROCESSORS)
def test_crop_size_at_call_time_brings_its_resize_size(cls, photo):
    expected = pixels(cls(crop_size=384), photo)
    assert torch.equal(pixels(cls(), photo, crop_size={"height": 384, "width": 384}), expected)
    # With an explicit size at call time, that size is used: 256 then a 384 crop pads the short side.
    padded = pixels(cls(), photo, crop_size=384, size={"shortest_edge": 256})
    assert padded.shape == (1, 3, 384, 384)
    assert not torch.allclose(padded, expected)


# ------------------------------------------------------------------------------------------- official equivalence


@pytest.mark.parametrize("crop", [224, 384])
@pytest.mark.parametrize("name", ["china.jpg", "flower.jpg"])
@pytest.mark.parametrize("cls", PROCESSORS)
def test_matches_the_official_pipeline(cls, name, crop, photos):
    image = photos[name]
    expected = official_transform(crop)(image).unsqueeze(0)
    processor = cls() if crop == 224 else cls(crop_size={"height": crop, "width": crop})
    actual = pixels(processor, image)

    assert actual.shape == (1, 3, crop, crop)
    assert actual.dtype == torch.float32
    assert (actual - expected).abs().mean().item() < 0.01
    if cls is CeiTImageProcessorPil:
        # Same Pillow resize, same crop offsets: the PIL backend reproduces the official tensors.
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- input kinds


def _mode_image(photo: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    if mode == "P":
        return photo.convert("P", palette=Image.Palette.ADAPTIVE)
    return photo.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA", "PA", "1", "I", "F", "YCbCr", "HSV"])
@pytest.mark.parametrize("cls", PROCESSORS)
def test_every_pil_mode_gives_an_rgb_batch(cls, mode, photo):
    image = _mode_image(photo, mode)
    assert image.mode == mode
    out = pixels(cls(), image)
    assert out.shape == (1, 3, 224, 224)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if mode in ("L", "I;16", "1", "LA", "I", "F"):
        rgb = unnormalize(out)
        torch.testing.assert_close(rgb[:, 0], rgb[:, 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(rgb[:, 0], rgb[:, 2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", PROCESSORS)
def test_mode_conversions_keep_the_picture(cls, photo):
    processor = cls()
    rgb = pixels(processor, photo)
    gray = pixels(processor, photo.convert("L"))
    # Opaque alpha, CMYK and palette-free conversions are lossless; 16-bit is scaled to the same 8-bit gray.
    assert torch.equal(pixels(processor, photo.convert("RGBA")), rgb)
    assert torch.equal(pixels(processor, photo.convert("CMYK")), rgb)
    assert torch.equal(pixels(processor, _mode_image(photo, "I;16")), gray)
    big_endian = Image.frombytes("I;16B", photo.size, (np.asarray(photo.convert("L")).astype(">u2") * 257).tobytes())
    assert torch.equal(pixels(processor, big_endian), gray)
    # Transparent pixels are composited onto white.
    transparent = Image.new("RGBA", (50, 40), (10, 200, 30, 0))
    torch.testing.assert_close(unnormalize(pixels(processor, transparent)), torch.ones(1, 3, 224, 224))


@pytest.mark.parametrize("cls", PROCESSORS)
def test_arrays_and_tensors_match_the_pil_input(cls, photo):
    processor = cls()
    expected = pixels(processor, photo)
    array = np.asarray(photo)  # (H, W, 3) uint8, read-only
    inputs = {
        "HWC uint8": array,
        "CHW uint8": array.transpose(2, 0, 1),
        "HWC tensor": torch.from_numpy(array.copy()),
        "CHW tensor": torch.from_numpy(array.copy()).permute(2, 0, 1),
        "HWC float32 0-255": array.astype(np.float32),
        "CHW float64 0-255": array.transpose(2, 0, 1).astype(np.float64),
        "HWC int64": array.astype(np.int64),
        "HWC uint16": array.astype(np.uint16) * 257,
        "float tensor requiring grad": torch.tensor(array, dtype=torch.float32, requires_grad=True),
    }
    for name, image in inputs.items():
        diff = (pixels(processor, image) - expected).abs().mean().item()
        assert diff < 0.01, f"{name}: mean abs difference {diff}"

    scaled = pixels(processor, array.astype(np.float32) / 255, do_rescale=False)
    assert (scaled - expected).abs().mean().item() < 0.01

    gray = np.asarray(photo.convert("L"))
    assert (pixels(processor, gray) - pixels(processor, photo.convert("L"))).abs().mean().item() < 0.01


@pytest.mark.parametrize("cls", PROCESSORS)
def test_already_scaled_floats_warn(cls, photo):
    from transformers.testing_utils import CaptureLogger

    image_processing_ceit.logger.warning_once.cache_clear()
    # (a handler on the logger itself: other tests may turn transformers' log propagation off)
    with CaptureLogger(image_processing_ceit.logger) as captured:
        pixels(cls(), np.asarray(photo, dtype=np.float32) / 255)
    assert "do_rescale=False" in captured.out


@pytest.mark.parametrize("cls", PROCESSORS)
def test_batches(cls, photos):
    processor = cls()
    china, flower = photos["china.jpg"], photos["flower.jpg"]
    singles = [pixels(processor, china), pixels(processor, flower), pixels(processor, china.convert("L"))]

    batch = pixels(processor, [china, np.asarray(flower), china.convert("L")])
    assert batch.shape == (3, 3, 224, 224)
    for index, single in enumerate(singles):
        assert torch.equal(batch[index : index + 1], single)

    stacked = np.stack([np.asarray(china)] * 2)  # a 4-D (N, H, W, C) batch
    assert torch.equal(pixels(processor, stacked), torch.cat([singles[0]] * 2))
    assert pixels(processor, [[china], [flower, china]]).shape == (3, 3, 224, 224)


@pytest.mark.parametrize("cls", PROCESSORS)
def test_tiny_and_extreme_aspect_ratio_images(cls):
    processor = cls()
    color = (200, 30, 90)
    expected = ((torch.tensor(color) / 255).view(1, 3, 1, 1) - MEAN) / STD
    images = [
        Image.new("RGB", (1, 1), color),
        np.full((1, 1, 3), color, dtype=np.uint8),
        np.full((1, 60, 3), color, dtype=np.uint8),  # one pixel high
        Image.new("RGB", (700, 2), color),
        Image.new("RGB", (3, 900), color),
        Image.new("L", (1, 1), 77),
    ]
    for image in images[:-1]:
        out = pixels(processor, image)
        assert out.shape == (1, 3, 224, 224)
        torch.testing.assert_close(out, expected.expand_as(out), atol=1e-3, rtol=0)
    gray = unnormalize(pixels(processor, images[-1]))
    torch.testing.assert_close(gray, torch.full_like(gray, 77 / 255), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------------------- errors


BAD_INPUTS = {
    "string that is not a path": ("no/such/image.jpg", ["Could not load an image", "'no/such/image.jpg'", "path"]),
    "None": (None, ["got None", "Expected"]),
    "int": (7, ["not an image", "int 7", "Expected"]),
    "1-D array": (np.zeros(10, dtype=np.uint8), ["1 dimension", "(10,)", "Expected"]),
    "5 channels": (np.zeros((20, 20, 5), dtype=np.uint8), ["(20, 20, 5)", "1, 3 or 4", "Expected"]),
    "empty list": ([], ["empty list", "Expected"]),
    "None in a batch": ([np.zeros((8, 8, 3), dtype=np.uint8), None], ["Input 1 of the batch", "NoneType"]),
    "empty image": (np.zeros((0, 20, 3), dtype=np.uint8), ["empty", "(0, 20, 3)"]),
    "bool array": (np.zeros((8, 8, 3), dtype=bool), ["dtype bool", "pixel"]),
    "5-D array": (np.zeros((1, 1, 3, 8, 8), dtype=np.uint8), ["5 dimension", "Expected"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
@pytest.mark.parametrize("cls", PROCESSORS)
def test_bad_inputs_raise_a_clear_value_error(cls, name):
    image, fragments = BAD_INPUTS[name]
    with pytest.raises(ValueError) as error:
        cls()(image, return_tensors="pt")
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("cls", PROCESSORS)
def test_a_file_that_is_not_an_image_raises(cls, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="Could not load an image"):
        cls()(str(path))


# ----------------------------------------------------------------------------------------- saving and Auto classes


@pytest.mark.parametrize("crop", [224, 384])
@pytest.mark.parametrize("cls", PROCESSORS)
def test_save_and_load_through_auto_image_processor(cls, crop, photo, tmp_path):
    processor = cls(crop_size={"height": crop, "width": crop})
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "CeiTImageProcessor"
    assert saved["size"] == {"shortest_edge": int(256 / 224 * crop)}
    assert not (tmp_path / "config.json").exists()  # the registered image_processor_type is enough

    loaded = {"torchvision": AutoImageProcessor.from_pretrained(tmp_path)}
    loaded["pil"] = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(loaded["torchvision"]) is CeiTImageProcessor
    assert type(loaded["pil"]) is CeiTImageProcessorPil

    reference = {cls_.__name__: pixels(cls_(crop_size=crop), photo) for cls_ in PROCESSORS}
    assert torch.equal(pixels(loaded["torchvision"], photo), reference["CeiTImageProcessor"])
    assert torch.equal(pixels(loaded["pil"], photo), reference["CeiTImageProcessorPil"])
    assert loaded["torchvision"].to_dict() == loaded["pil"].to_dict() == processor.to_dict()


def test_works_as_hub_remote_code(photo, tmp_path):
    """Loaded from a folder by `trust_remote_code`, in a process that never imports `ceit_hf`."""
    folder = tmp_path / "repo"
    CeiTImageProcessor(crop_size=384).save_pretrained(folder)
    shutil.copy(image_processing_ceit.__file__, folder / "image_processing_ceit.py")
    config_path = folder / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {
        "AutoImageProcessor": {
            "torchvision": "image_processing_ceit.CeiTImageProcessor",
            "pil": "image_processing_ceit.CeiTImageProcessorPil",
        }
    }
    config_path.write_text(json.dumps(config))
    photo.save(tmp_path / "photo.png")

    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from transformers import AutoImageProcessor
        from PIL import Image

        image = Image.open({str(tmp_path / "photo.png")!r})
        for backend in ("torchvision", "pil"):
            processor = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True, backend=backend)
            assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
            print(backend, type(processor).__name__)
            np.save({str(tmp_path)!r} + f"/{{backend}}.npy", processor(image, return_tensors="np")["pixel_values"])
        assert "ceit_hf" not in sys.modules
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "torchvision CeiTImageProcessor" in result.stdout
    assert "pil CeiTImageProcessorPil" in result.stdout
    for backend, cls in (("torchvision", CeiTImageProcessor), ("pil", CeiTImageProcessorPil)):
        remote = torch.from_numpy(np.load(tmp_path / f"{backend}.npy"))
        assert torch.equal(remote, pixels(cls(crop_size=384), photo))


def test_module_imports_only_what_remote_code_allows():
    tree = ast.parse(Path(image_processing_ceit.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            assert node.level <= 1, "only same-folder relative imports are followed for remote code"
    assert imported - set(sys.stdlib_module_names) <= {"numpy", "torch", "transformers"}, imported


def test_package_exports_and_registration():
    assert {"CeiTImageProcessor", "CeiTImageProcessorPil"} <= set(ceit_hf.__all__)
    assert CeiTImageProcessor().backend == "torchvision"
    assert CeiTImageProcessorPil().backend == "pil"


# -------------------------------------------------------------------------------------------------------- pipeline


def test_image_classification_pipeline(photo, tmp_path):
    config = CeiTConfig.from_preset(
        "ceit_tiny_patch16_224", num_encoder_blocks=1, id2label={0: "cat", 1: "dog", 2: "bird"}
    )
    model = CeiTForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    CeiTImageProcessor().save_pretrained(tmp_path)

    classifier = pipeline("image-classification", model=str(tmp_path))
    assert type(classifier.image_processor) is CeiTImageProcessor
    predictions = classifier(photo, top_k=3)

    assert {p["label"] for p in predictions} == {"cat", "dog", "bird"}
    scores = [p["score"] for p in predictions]
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert scores == sorted(scores, reverse=True)

    with torch.no_grad():
        probabilities = model(pixels(CeiTImageProcessor(), photo)).logits.softmax(-1)[0]
    for prediction in predictions:
        index = config.label2id[prediction["label"]]
        assert prediction["score"] == pytest.approx(probabilities[index].item(), abs=1e-5)


# --- image files: damaged, unusual modes and depths, decoded alike as a path and as an opened image ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """A photo saved as PNG and JPEG, in several modes, and damaged copies of it."""
    folder = tmp_path_factory.mktemp("images")
    photo = Image.fromarray(load_sample_image("flower.jpg")).resize((160, 107))
    files = {}

    def save(name, image, **kwargs):
        files[name] = folder / name
        image.save(files[name], **kwargs)

    save("photo.png", photo)
    save("photo.jpg", photo, quality=95)
    save("gray.png", photo.convert("L"))
    save("gray16.png", Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257))
    rgba = np.asarray(photo.convert("RGBA")).copy()
    rgba[:, : rgba.shape[1] // 2, 3] = 0  # left half transparent
    save("rgba.png", Image.fromarray(rgba))
    save("la.png", photo.convert("LA"))
    save("palette_transparent.png", photo.convert("P", palette=Image.Palette.ADAPTIVE), transparency=0)
    save("cmyk.jpg", photo.convert("CMYK"), quality=95)
    save("tall.png", photo.resize((3, 900)))

    def damaged(name, source, change):
        files[name] = folder / name
        files[name].write_bytes(change(bytearray(files[source].read_bytes())))

    damaged("truncated.png", "photo.png", lambda data: data[: len(data) // 2])
    damaged("truncated.jpg", "photo.jpg", lambda data: data[: len(data) // 2])
    damaged("header_only.png", "photo.png", lambda data: data[:64])
    damaged("garbled.png", "photo.png", lambda data: data[:1000] + bytes(200) + data[1200:])
    damaged("garbled.jpg", "photo.jpg", lambda data: data[:2000] + bytes(range(256)) + data[2256:])
    damaged("empty.png", "photo.png", lambda data: b"")
    damaged("not_an_image.png", "photo.png", lambda data: b"%PDF-1.4 not an image")
    return files


@pytest.mark.parametrize("name", ["truncated.png", "truncated.jpg", "header_only.png", "garbled.png"])
@pytest.mark.parametrize("cls", PROCESSORS)
def test_damaged_image_files_are_refused_as_path_and_as_opened_image(cls, name, image_files):
    path = image_files[name]
    with pytest.raises(ValueError, match=rf"Could not load an image: the file '.*{name}' is damaged, truncated"):
        pixels(cls(), str(path))
    # Pillow opens lazily (only the header): the damage shows when the processor decodes it.
    with pytest.raises(ValueError, match="cannot be decoded, its file is damaged or truncated"):
        pixels(cls(), Image.open(path))
    with pytest.raises(ValueError, match="Input 1 of the batch cannot be decoded"):
        pixels(cls(), [Image.open(image_files["photo.png"]), Image.open(path)])


@pytest.mark.parametrize("name", ["empty.png", "not_an_image.png"])
@pytest.mark.parametrize("cls", PROCESSORS)
def test_files_that_are_no_image_are_refused(cls, name, image_files):
    with pytest.raises(ValueError, match="is damaged, truncated or not an image"):
        pixels(cls(), str(image_files[name]))


@pytest.mark.parametrize("cls", PROCESSORS)
def test_a_garbled_jpeg_is_refused(cls, image_files):
    # 256 bytes of the entropy-coded data overwritten: Pillow's decoder reports the file as broken
    with pytest.raises(ValueError, match=r"the file '.*garbled.jpg' is damaged"):
        pixels(cls(), str(image_files["garbled.jpg"]))
    with pytest.raises(ValueError, match="cannot be decoded, its file is damaged or truncated"):
        pixels(cls(), Image.open(image_files["garbled.jpg"]))


def test_a_garbled_png_path_does_not_crash_the_process(image_files, tmp_path):
    """torchvision's PNG decoder (which transformers' torchvision backend uses for paths) dies with a segmentation
    fault on this file; the processors decode files with Pillow. Run apart, so that a crash fails only this test."""
    script = textwrap.dedent(
        f"""
        from ceit_hf import CeiTImageProcessor
        try:
            CeiTImageProcessor()({str(image_files["garbled.png"])!r}, return_tensors="pt")
        except ValueError as error:
            print("ValueError:", error)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit code {result.returncode}: {result.stderr[-2000:]}"
    assert "ValueError: Could not load an image: the file" in result.stdout


@pytest.mark.parametrize(
    "name",
    ["photo.png", "photo.jpg", "gray16.png", "rgba.png", "la.png", "palette_transparent.png", "cmyk.jpg", "tall.png"],
)
@pytest.mark.parametrize("cls", PROCESSORS)
def test_image_files_give_the_same_pixels_as_path_and_as_opened_image(cls, name, image_files):
    """A path is decoded like the PIL image of the same file: transparency composited onto white, 16-bit scaled to 8
    bits (transformers' own loaders convert to RGB first: transparent pixels keep their hidden colour, and 16-bit
    grayscale comes out white)."""
    processor = cls()
    from_path = pixels(processor, str(image_files[name]))
    assert from_path.shape == (1, 3, 224, 224) and torch.isfinite(from_path).all()
    assert torch.equal(from_path, pixels(processor, Image.open(image_files[name])))


@pytest.mark.parametrize("cls", PROCESSORS)
def test_sixteen_bit_and_transparent_files_keep_their_picture(cls, image_files):
    processor = cls()
    assert torch.equal(
        pixels(processor, str(image_files["gray16.png"])), pixels(processor, str(image_files["gray.png"]))
    )
    rgba = pixels(processor, str(image_files["rgba.png"]))
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    # the transparent left half is white, the opaque right half is the photo
    torch.testing.assert_close(rgba[0, :, :, :90], white.view(3, 1, 1).expand(3, 224, 90), atol=1e-4, rtol=0)
    assert not torch.allclose(rgba[0, :, :, -90:], white.view(3, 1, 1).expand(3, 224, 90), atol=0.1)
