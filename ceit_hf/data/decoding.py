# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Decoding each image here (its `datasets` column left undecoded): a file that fails is named, and
`--bad_image_policy` decides what takes its place."""

from __future__ import annotations

import logging

from PIL import Image


logger = logging.getLogger("ceit_hf.data")
IGNORE_INDEX = -100  # the label that cross-entropy and the metrics leave out: a bad image in evaluation
PLACEHOLDER_SIZE = (224, 224)  # the blank image in a bad one's place
BAD_IMAGE_POLICIES = ("skip", "stop")
# What Pillow raises for a file that is no image, damaged, truncated (SyntaxError: "broken PNG file") or too large.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DataError(Exception):
    """A data error; from a DataLoader worker only its `error:` line is kept (`run.main` ends with it)."""

    def __init__(self, message: str):
        last = next((line for line in reversed(message.splitlines()) if "error: " in line), message)
        super().__init__(last[max(last.find("error: "), 0) :])  # a message without the marker stays whole


class BadImageError(DataError):
    """An image that fails to decode, named."""

    def __init__(self, message: str, name: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.name, self.reason = name, reason


def check_bad_image_policy(policy: str) -> None:
    if policy not in BAD_IMAGE_POLICIES:
        raise SystemExit(f"error: --bad_image_policy must be one of {BAD_IMAGE_POLICIES}, got {policy!r}.")


def undecoded(dataset, column: str):
    """`dataset` with its `datasets.Image` column left undecoded ({'bytes', 'path'}) for `decode_image`."""
    import datasets

    feature = dataset.features[column] if dataset.features else None
    if not isinstance(feature, datasets.Image) or not feature.decode:
        return dataset
    return dataset.cast_column(column, datasets.Image(mode=feature.mode, decode=False))


def decode_image(value, feature):
    """`value` of a `feature` column decoded in full, or `BadImageError` naming it; other values as they are."""
    import datasets

    if not isinstance(feature, datasets.Image) or not isinstance(value, dict):
        return value
    try:
        return feature.decode_example(value)
    except IMAGE_ERRORS as error:
        name = value.get("path") or f"an image of {len(value.get('bytes') or b'')} bytes"
        reason = f"{type(error).__name__}: {error}"
        raise BadImageError(f"error: cannot decode {name} ({reason}).", name=name, reason=reason) from None


class ExampleDecoder:
    """Decodes an example's image under `--bad_image_policy`: "stop" raises `BadImageError`; "skip" names a bad one
    in a warning, counts it, and in evaluation puts a blank image labelled `IGNORE_INDEX` in its place."""

    def __init__(self, image_column: str, label_column: str, feature, policy: str, evaluation: bool):
        check_bad_image_policy(policy)
        self.image_column, self.label_column, self.feature = image_column, label_column, feature
        self.policy, self.evaluation = policy, evaluation
        self.skipped, self.last_skipped = 0, None  # per process: each DataLoader worker counts its own

    def decode(self, value, label):
        """(image, label), or None for a bad image skipped in training."""
        try:
            return decode_image(value, self.feature), label
        except BadImageError as error:
            if self.policy == "stop":
                raise
            self.skipped, self.last_skipped = self.skipped + 1, error.name
            what = "Leaving out of the evaluation" if self.evaluation else "Skipping"
            message = "%s %s (%s), %d so far in this process (--bad_image_policy skip)"
            logger.warning(message, what, error.name, error.reason, self.skipped)
            return (Image.new("RGB", PLACEHOLDER_SIZE), IGNORE_INDEX) if self.evaluation else None


class DecodedExamples(ExampleDecoder):
    """A `datasets.Dataset` as `pixel_values` and `labels`, by batches of keys (a row index plus a multiple of the
    length for a repeat); a bad image skipped in training gives way to the next decodable row (batches stay full)."""

    def __init__(self, dataset, image_column: str, label_column: str, transform, policy="skip", evaluation=False):
        super().__init__(image_column, label_column, dataset.features[image_column], policy, evaluation)
        self.source, self.transform = undecoded(dataset, image_column), transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, keys: list[int]) -> list[dict]:
        indices = [int(key) % len(self.source) for key in keys]
        rows = self.source[indices]
        examples = [self.example(*row) for row in zip(rows[self.image_column], rows[self.label_column], indices)]
        pixel_values = self.transform([image for image, _ in examples], keys)
        return [{"pixel_values": pixels, "labels": label} for pixels, (_, label) in zip(pixel_values, examples)]

    def example(self, value, label, index: int):
        """(image, label) of the row `index`, or what takes its place."""
        if (decoded := self.decode(value, label)) is not None:
            return decoded
        for offset in range(1, len(self.source)):
            row = self.source[(index + offset) % len(self.source)]
            try:
                return decode_image(row[self.image_column], self.feature), row[self.label_column]
            except BadImageError:
                continue  # counted and named when its own turn comes
        raise BadImageError(f"error: no image of the dataset decodes: none can take the place of {self.last_skipped}.")


# `dataset` decoded and transformed on the fly; `transform` receives the batch's images and their keys.
with_transform = DecodedExamples
