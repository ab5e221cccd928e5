# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Streams (`--streaming`): a Hub dataset or local shards read as they are consumed, split between the processes
and their DataLoader workers, shuffled in a buffer, and resumed from a checkpoint's position."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image
from torch.utils.data import IterableDataset as TorchIterableDataset
from transformers import TrainerCallback

from .decoding import IGNORE_INDEX, PLACEHOLDER_SIZE, ExampleDecoder, undecoded


logger = logging.getLogger("ceit_hf.data")

#
# A stream (`--streaming`) is read by every process for itself: `datasets.distributed.split_dataset_by_node` gives
# each process whole shards when their count is a multiple of the processes (else every process reads all and
# keeps one example in world size), and `datasets` gives each DataLoader worker of a process whole shards of those.
# Each worker reads its part pass after pass, with no end: the shards' order (and so which process reads which) is
# drawn from (seed, pass), the same on every process, so that a pass never gives an example twice across
# processes, and a process never runs out of data before the others (the run is sized by --max_steps). A worker
# reads its shards one after the other, through a shuffle buffer of --shuffle_buffer_size examples seeded from
# (seed, pass, process, worker): shards written in random order (as webdataset and timm advise) shuffle best.
#
# The position: each example carries its worker's position in the source (`IterableDataset.state_dict`: the shard
# and the example in it that the worker has read up to), the training process keeps the one of the last batch it
# consumed from each worker, and a checkpoint saves them (`StreamPositionCallback`). A resumed run starts each
# worker there. Exact: the shards and examples read from the source (none consumed before the checkpoint comes
# again in that pass). Not kept: the shuffle buffers' contents (at most --shuffle_buffer_size examples per worker,
# which the resumed pass leaves out) and the order drawn from them; batches prefetched but not consumed are read
# again.

STREAM_POSITION = "__stream_position__"
STREAM_STATE_FILE = "stream_state_rank{rank}.json"


class StreamedExamples(TorchIterableDataset):
    """A `datasets` stream as `pixel_values` and `labels`, decoded (`ExampleDecoder`) and transformed example by
    example. `split` = (seed, shuffle buffer size, process rank, world size) for training: the stream is split
    between the processes and read pass after pass without end (see above), a bad image under "skip" is left out
    (the next example of the stream follows). Without `split` (evaluation) it is read once, in order, by the process
    that reads (accelerate sends the batches to the others), and a bad image counts as `IGNORE_INDEX`."""

    def __init__(self, source, image_column, label_column, transform, num_labels, policy="skip", split=None):
        super().__init__()
        feature = source.features[image_column] if source.features else None
        self.decoder = ExampleDecoder(image_column, label_column, feature, policy, evaluation=split is None)
        self.source, self.transform = undecoded(source, image_column), transform
        self.num_labels, self.split = num_labels, split
        self.start = {}  # worker -> the position to resume it from (training)
        self.consumed = {}  # worker -> the position of the last batch the training process consumed from it

    def pass_stream(self, number: int):
        """The part of the source that this process reads in pass `number`: the shards in an order drawn from
        (seed, pass) (`set_epoch` of a `datasets` stream), split between the processes."""
        from datasets.distributed import split_dataset_by_node

        seed, _, rank, world_size = self.split
        stream = split_dataset_by_node(self.source, rank=rank, world_size=world_size)  # a new stream object
        stream.set_epoch(1 + hash((seed, number)) % 0x7FFF_FFFF)  # (epoch 0 keeps the order as it is)
        return stream

    def __iter__(self):
        if self.split is None:
            return (self.example(row, key=None) for row in self.source)
        return self.training_examples()

    def training_examples(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        seed, buffer_size, rank, _ = self.split
        position = self.start.get(worker) or {"pass": 0, "given": 0, "state": None}
        number, given, state = position["pass"], position["given"], position["state"]
        while True:
            stream = self.pass_stream(number)
            if state is not None:
                stream.load_state_dict(state)
            start = given
            for row in shuffle_buffer(stream, buffer_size, np.random.default_rng([seed, number, rank, worker])):
                given += 1
                if (example := self.training_example(row, number, worker, given, stream)) is not None:
                    yield example
            if given == start:  # nothing in a whole pass: no shard for this worker
                return
            number, given, state = number + 1, 0, None

    def training_example(self, row, number: int, worker: int, given: int, stream):
        """The example of `row`, the `given`-th of pass `number` of `worker` (None for a bad image under "skip"),
        with the position of `stream`. Its augmentation is seeded from (pass, process, worker, given)."""
        example = self.example(row, key=hash((number, self.split[2], worker, given)) & 0x7FFF_FFFF_FFFF)
        if example is not None:
            example[STREAM_POSITION] = (worker, {"pass": number, "given": given, "state": stream.state_dict()})
        return example

    def example(self, row, key):
        label = row[self.decoder.label_column]
        if not 0 <= label < self.num_labels:
            raise ValueError(
                f"The stream has the label {label} outside the model's {self.num_labels} classes "
                f"(id2label 0..{self.num_labels - 1})."
            )
        image = self.decoder.decode(row[self.decoder.image_column])
        if image is None:
            if self.split is not None:
                return None
            image, label = Image.new("RGB", PLACEHOLDER_SIZE), IGNORE_INDEX
        return {"pixel_values": self.transform([image], [key])[0], "labels": label}

    def data_loader(self, args):
        """The training DataLoader of this stream for `TrainingArguments` `args` (Trainer's own would have accelerate
        split it between the processes again), keeping the position of what the training process consumes."""
        loader = torch.utils.data.DataLoader(
            self,
            batch_size=args.per_device_train_batch_size,
            collate_fn=collate_stream,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers else None,
        )
        return StreamLoader(loader, self)

    def position(self, args) -> dict:
        return {
            "world_size": self.split[3],
            "num_workers": args.dataloader_num_workers,
            "workers": {str(worker): position for worker, position in self.consumed.items()},
        }

    def resume(self, saved: dict, args, source: str) -> None:
        """Starts each worker at its position in `saved` (`position()` of the checkpoint `source`)."""
        ours = (self.split[3], args.dataloader_num_workers)
        theirs = (saved["world_size"], saved["num_workers"])
        if ours != theirs:
            raise SystemExit(
                f"error: {source} was saved by {theirs[0]} process(es) with {theirs[1]} data-loading worker(s) each, "
                f"this run has {ours[0]} with {ours[1]}: a stream resumes with the same numbers (--dataloader_num_workers)."
            )
        self.start = {int(worker): position for worker, position in saved["workers"].items()}
        self.consumed = dict(self.start)


def shuffle_buffer(rows, size: int, rng):
    """`rows` in random order: each row goes into a buffer of `size`, and a row drawn from it at random comes out."""
    buffer = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        slot = int(rng.integers(size))
        row, buffer[slot] = buffer[slot], row
        yield row
    for slot in rng.permutation(len(buffer)):
        yield buffer[slot]


def collate_stream(examples: list[dict]) -> dict:
    """`default_data_collator` of the examples, and the stream position after the last of them."""
    from transformers import default_data_collator

    position = examples[-1][STREAM_POSITION]
    batch = default_data_collator([{k: v for k, v in e.items() if k != STREAM_POSITION} for e in examples])
    batch[STREAM_POSITION] = position
    return batch


class StreamLoader:
    """The training DataLoader of a `StreamedExamples`, handing Trainer the batches without their position, which
    it keeps in the stream's `consumed` (by worker)."""

    def __init__(self, loader, stream: StreamedExamples):
        self.loader, self.stream = loader, stream

    def __iter__(self):
        for batch in self.loader:
            worker, position = batch.pop(STREAM_POSITION)
            self.stream.consumed[worker] = position
            yield batch
        raise SystemExit(
            "error: the stream gave this process no examples: it has fewer shards than the processes x data-loading "
            "workers can share, or no image of its shards decodes."
        )


class StreamPositionCallback(TrainerCallback):
    """Saves each process's stream position with every checkpoint (`stream_state_rank<R>.json`) and starts the
    stream there when the run resumes from one."""

    def __init__(self, stream: StreamedExamples, resume_from: str | None = None):
        self.stream, self.resume_from = stream, resume_from

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_from:
            path = Path(self.resume_from) / STREAM_STATE_FILE.format(rank=args.process_index)
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise SystemExit(f"error: cannot resume the stream: {path} is missing or damaged ({error}).") from None
            self.stream.resume(saved, args, str(self.resume_from))

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / STREAM_STATE_FILE.format(rank=args.process_index)
        path.write_text(json.dumps(self.stream.position(args)), encoding="utf-8")


def streamed_splits(
    raw, source, num_labels: int, train, evaluate, *, seed: int, shuffle_buffer_size: int, rank: int, world_size: int
):
    """(training stream, evaluation stream) of the streams `raw` (`sources.load_streams` of the `DataSource`
    `source`) with the transforms `train` and `evaluate`, for process `rank` of `world_size`."""
    columns = (source.image_column_name, source.label_column_name)
    split = (seed, shuffle_buffer_size, rank, world_size)
    policy = source.bad_image_policy
    return (
        StreamedExamples(raw["train"], *columns, train, num_labels, policy, split=split),
        StreamedExamples(raw["validation"], *columns, evaluate, num_labels, policy),
    )
