# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Decoding the images of a dataset: each image is decoded here (its `datasets` column left undecoded), so that a file
that fails is named, and `--bad_image_policy` decides what takes its place (the next image in training, nothing in
evaluation: a score is never that of another image)."""

from __future__ import annotations

import logging

from PIL import Image


logger = logging.getLogger("ceit_hf.data")
# The label that cross-entropy (its ignore_index) and the metrics leave out: a bad image in evaluation.
IGNORE_INDEX = -100
PLACEHOLDER_SIZE = (224, 224)  # the blank image in its place
BAD_IMAGE_POLICIES = ("skip", "stop")
# What Pillow raises for a file that is no image, is damaged or truncated (SyntaxError: "broken PNG file"), or
# too large to be safe.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImageError(Exception):
    """An image that fails to decode, named. A DataLoader worker hands it to the training process, which raises it
    again with the worker's traceback as the message: the constructor keeps the one `error:` line of it
    (`run.main` ends the command line with that line, as the other data errors)."""

    def __init__(self, message: str, name: str | None = None, reason: str | None = None):
        last = next((line for line in reversed(message.splitlines()) if "error: " in line), message)
        super().__init__(last[last.find("error: ") :])
        self.name, self.reason = name, reason


def check_bad_image_policy(policy: str) -> None:
    if policy not in BAD_IMAGE_POLICIES:
        raise SystemExit(f"error: --bad_image_policy must be one of {BAD_IMAGE_POLICIES}, got {policy!r}.")


def undecoded(dataset, column: str):
    """`dataset` with its `datasets.Image` column left undecoded ({'bytes', 'path'}): `decode_image` decodes it."""
    import datasets

    feature = dataset.features[column] if dataset.features else None
    if not isinstance(feature, datasets.Image) or not feature.decode:
        return dataset
    return dataset.cast_column(column, datasets.Image(mode=feature.mode, decode=False))


def decode_image(value, feature):
    """The image `value` of a column of type `feature` decoded in full as `datasets` would, or `BadImageError`
    naming its file (or its row's bytes). Values of other columns (already images) are returned as they are."""
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
    """Decodes the image of an example itself (its column left undecoded), so that a file that fails is named, and
    applies `--bad_image_policy` to it: "stop" raises `BadImageError`; "skip" logs a warning naming it and counts
    it. What takes the place of a bad image depends on where it is read (`DecodedExamples`, `StreamedExamples`): in
    evaluation it is left out of the loss and the metrics (its label becomes `IGNORE_INDEX`), so a score is never
    that of another image."""

    def __init__(self, image_column: str, label_column: str, feature, policy: str, evaluation: bool):
        check_bad_image_policy(policy)
        self.image_column, self.label_column, self.feature = image_column, label_column, feature
        self.policy, self.evaluation = policy, evaluation
        self.skipped, self.last_skipped = 0, None  # per process: each DataLoader worker counts its own

    def decode(self, value):
        """The decoded image, or None for a bad one under "skip" (named in a warning and counted)."""
        try:
            return decode_image(value, self.feature)
        except BadImageError as error:
            if self.policy == "stop":
                raise
            self.skipped, self.last_skipped = self.skipped + 1, error.name
            logger.warning(
                "%s %s (%s), %d so far in this process (--bad_image_policy skip)",
                "Leaving out of the evaluation" if self.evaluation else "Skipping",
                error.name,
                error.reason,
                self.skipped,
            )
            return None


class DecodedExamples(ExampleDecoder):
    """A map-style dataset over the rows of a `datasets.Dataset` yielding `pixel_values` and `labels` (what
    `default_data_collator` stacks): a batch of rows is read in one go (`__getitems__`, as `datasets` itself), its
    images decoded (`ExampleDecoder`), then `transform` is applied to the images and their keys. A key is the row
    index, or a row index plus a multiple of the dataset's length: the k-th repeat of a row in an epoch under
    repeated augmentation (`loader.RepeatedAugmentationSampler`), the same row with a key, and so an augmentation,
    of its own.

    A bad image under "skip": in training the next decodable example of the dataset (and its label) takes its place,
    a deterministic choice that keeps batches full, which data-parallel processes need (they step together); in
    evaluation a blank image with the label `IGNORE_INDEX` takes it, left out of the loss and the metrics."""

    def __init__(self, dataset, image_column: str, label_column: str, transform, policy="skip", evaluation=False):
        feature = dataset.features[image_column]
        super().__init__(image_column, label_column, feature, policy, evaluation)
        self.source, self.transform = undecoded(dataset, image_column), transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, keys: list[int]) -> list[dict]:
        indices = [int(key) % len(self.source) for key in keys]
        rows = self.source[indices]
        examples = [
            self.example(value, label, index)
            for value, label, index in zip(rows[self.image_column], rows[self.label_column], indices)
        ]
        pixel_values = self.transform([image for image, _ in examples], keys)
        return [{"pixel_values": pixels, "labels": label} for pixels, (_, label) in zip(pixel_values, examples)]

    def example(self, value, label, index: int):
        """(image, label) of the row `index`, or what takes its place."""
        image = self.decode(value)
        if image is not None:
            return image, label
        if self.evaluation:
            return Image.new("RGB", PLACEHOLDER_SIZE), IGNORE_INDEX
        for offset in range(1, len(self.source)):
            row = self.source[(int(index) + offset) % len(self.source)]
            try:
                return decode_image(row[self.image_column], self.feature), row[self.label_column]
            except BadImageError:
                continue  # counted and named when its own turn comes
        raise BadImageError(f"error: no image of the dataset decodes: none can take the place of {self.last_skipped}.")


def with_transform(
    dataset, image_column: str, label_column: str, transform, bad_image_policy: str = "skip", evaluation=False
):
    """`dataset` yielding `pixel_values` and `labels`, decoded and transformed on the fly by `DecodedExamples`;
    `transform` receives the batch's images and their row indices."""
    return DecodedExamples(dataset, image_column, label_column, transform, bad_image_policy, evaluation)
