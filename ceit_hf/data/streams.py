# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Streams (`--streaming`): a Hub dataset or local shards read as they are consumed. In pass P the shards are ordered
from (seed, P); process R takes every world-size-th (or reads all and keeps one example in world size), its worker W
every num-workers-th of those: a pass gives every example once. A worker reads pass after pass through a shuffle
buffer seeded from (seed, P, R, W); a row leaving it gets its index in the pass and only then is decoded and augmented,
seeded from (P, R, W, index). A checkpoint saves each worker's (pass, index) and the worker due next; a resumed worker
reads its pass again through the same buffer, passing over the rows consumed."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image
from transformers import TrainerCallback, default_data_collator

from .decoding import IGNORE_INDEX, PLACEHOLDER_SIZE, DataError, ExampleDecoder, undecoded


STREAM_POSITION = "__stream_position__"
STREAM_STATE_FILE = "stream_state_rank{rank}.json"
STATE_VERSION = 2  # 2: (pass, index) per logical worker and the worker due next
ROWS_PER_READ = 64  # rows a worker takes from `datasets` at a time


class StreamError(DataError):
    """A training stream that cannot go on: a worker whose shards hold no example, or no image that decodes."""


class StreamedExamples(torch.utils.data.IterableDataset):
    """A `datasets` stream as `pixel_values` and `labels`. With `split` = (seed, shuffle buffer size, rank, world
    size), training: split between processes and workers, read without end, resumed exactly, bad images skipped.
    Without (evaluation): this process's share read once, a bad image counting as `IGNORE_INDEX`."""

    def __init__(self, source, image_column, label_column, transform, num_labels, policy="skip", split=None):
        super().__init__()
        feature = source.features[image_column] if source.features else None
        self.decoder = ExampleDecoder(image_column, label_column, feature, policy, evaluation=split is None)
        self.source, self.transform = undecoded(source, image_column), transform
        self.num_labels, self.split = num_labels, split
        self.consumed = {}  # logical worker -> {"pass", "given"} of the last example the training process consumed
        self.next_worker = 0  # the logical worker whose batch the training process takes next

    def __iter__(self):
        if self.split is None:
            yield from (self.example(row, key=None) for row in self.source)
            return
        # training: the examples of this DataLoader worker's logical worker, pass after pass, from its resume position
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # as `datasets` does in a worker: fsspec's lock of the parent process is not ours
            import fsspec.asyn

            fsspec.asyn.reset_lock()
        # a DataLoader starts at its worker 0, which plays the worker due next (of the position resumed from, if any)
        worker = (physical + self.next_worker) % num_workers
        seed, buffer_size, rank, world_size = self.split
        total, start = self.source.num_shards, self.consumed.get(worker, {"pass": 0, "given": 0})
        number, skip = start["pass"], start["given"]
        while True:
            order = np.random.default_rng([seed, number]).permutation(total).tolist()
            step = 1 if total % world_size == 0 else world_size  # else every process reads all, keeps its share
            shards = (order[rank::world_size] if step == 1 else order)[worker::num_workers]
            # read in blocks by `iter`, which (unlike iterating it in a worker) does not split the stream again
            blocks = (
                b for shard in shards for b in self.source.shard(total, shard, contiguous=True).iter(ROWS_PER_READ)
            )
            rows = (dict(zip(block, values)) for block in blocks for values in zip(*block.values()))
            rows = itertools.islice(rows, rank, None, step) if step > 1 else rows
            given = kept = 0
            for row in shuffle_buffer(rows, buffer_size, np.random.default_rng([seed, number, rank, worker])):
                given += 1
                if given <= skip:  # consumed before the checkpoint: it only takes its turn through the buffer
                    continue
                example = self.example(row, key=hash((number, rank, worker, given)) & 0x7FFF_FFFF_FFFF)
                if example is not None:
                    kept += 1
                    yield {**example, STREAM_POSITION: (worker, number, given)}
            where = f"data-loading worker {worker} of process {rank}"
            if given == 0:
                raise StreamError(
                    f"error: the stream gave {where} no examples in pass {number}: its shards {shards} are empty."
                )
            if kept == 0 and skip == 0:
                raise StreamError(
                    f"error: no image of the {given} examples that {where} read in pass {number} (shards {shards}) "
                    "decodes."
                )
            number, skip = number + 1, 0  # (a resumed pass with nothing left after `skip` goes on here too)

    def example(self, row, key):
        label = row[self.decoder.label_column]
        if not 0 <= label < self.num_labels:
            raise ValueError(
                f"The stream has the label {label} outside the model's {self.num_labels} classes "
                f"(id2label 0..{self.num_labels - 1})."
            )
        if (decoded := self.decoder.decode(row[self.decoder.image_column], label)) is None:
            return None
        return {"pixel_values": self.transform([decoded[0]], [key])[0], "labels": decoded[1]}

    def data_loader(self, args, accelerator=None):
        """The stream's DataLoader (not Trainer's: accelerate would split the stream again); in evaluation, this
        process's share (a worker per shard at most) in step with the other processes' (`EvaluationLoader`)."""
        training, shards = self.split is not None, self.source.num_shards
        workers = args.dataloader_num_workers if training else min(args.dataloader_num_workers, shards)
        world_size = self.split[3] if training else 1
        each = shards // world_size if shards % world_size == 0 else shards
        if training and each < max(1, workers):  # a worker without a shard of its own would be silent loss
            raise SystemExit(
                f"error: --streaming: the training split has {shards} shard(s), {each} for each of the {world_size} "
                f"process(es), fewer than its {workers} data-loading workers, which read whole shards: expected "
                f"--dataloader_num_workers {each} or fewer (or the data in more shards)."
            )
        loader = torch.utils.data.DataLoader(
            self,
            batch_size=args.per_device_train_batch_size if training else args.eval_batch_size,
            collate_fn=collate_stream if training else default_data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=training and args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if workers else None,
            # as Trainer's own loaders: "forkserver" or "spawn" keeps workers from forking a multi-threaded process
            multiprocessing_context=args.dataloader_multiprocessing_context if workers else None,
        )
        return StreamLoader(loader, self, max(1, workers)) if training else EvaluationLoader(loader, self, accelerator)

    def settings(self, args) -> dict:
        """What a resumed run must share with the saved one to read the same stream."""
        seed, buffer, _, world_size = self.split
        values = (world_size, args.dataloader_num_workers, self.source.num_shards, seed, buffer)
        return dict(zip(("world_size", "num_workers", "num_shards", "seed", "shuffle_buffer_size"), values))

    def position(self, args) -> dict:
        workers = {str(worker): position for worker, position in sorted(self.consumed.items())}
        return {"version": STATE_VERSION, **self.settings(args), "next_worker": self.next_worker, "workers": workers}

    def resume(self, saved: dict, args, source: str) -> None:
        """Starts each worker after its position in `saved`, and DataLoader worker 0 as the worker due next."""
        if saved.get("version") != STATE_VERSION:
            raise SystemExit(
                f"error: {source} holds a stream position of an earlier ceit_hf, which did not resume exactly: "
                "expected a checkpoint of this version (or start the run afresh)."
            )
        differ = [f"{k} {saved.get(k)} there, {v} here" for k, v in self.settings(args).items() if saved.get(k) != v]
        if differ:
            raise SystemExit(
                f"error: {source} was saved by a stream read otherwise ({', '.join(differ)}): a stream resumes with "
                "the same processes, --dataloader_num_workers, shards of --dataset_name, --seed and "
                "--shuffle_buffer_size."
            )
        self.consumed = {int(worker): position for worker, position in saved["workers"].items()}
        self.next_worker = saved["next_worker"]


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
    """`default_data_collator` of the examples, and the stream position of the last of them."""
    position = examples[-1][STREAM_POSITION]
    batch = default_data_collator([{k: v for k, v in e.items() if k != STREAM_POSITION} for e in examples])
    return {**batch, STREAM_POSITION: position}


class StreamLoader:
    """The training DataLoader of a stream; keeps each batch's position in the stream and hands Trainer the rest."""

    def __init__(self, loader, stream: StreamedExamples, num_workers: int):
        self.loader, self.stream, self.num_workers = loader, stream, num_workers

    def __iter__(self):
        for batch in self.loader:
            worker, number, given = batch.pop(STREAM_POSITION)
            self.stream.consumed[worker] = {"pass": number, "given": given}
            self.stream.next_worker = (worker + 1) % self.num_workers
            yield batch
        raise StreamError("error: the training stream ended, which it never should (its workers read without end).")


class EvaluationLoader:
    """One process's evaluation batches in step with the others' (for Trainer's collectives): a smaller batch or an
    ended share is padded with blank images labelled `IGNORE_INDEX` until all end; `gather` drops the padding."""

    def __init__(self, loader, stream: StreamedExamples, accelerator):
        self.loader, self.stream, self.accelerator = loader, stream, accelerator
        self.sizes = [0] * accelerator.num_processes  # of the current step, by process

    def __iter__(self):
        batches, padding = iter(self.loader), self.stream.transform([Image.new("RGB", PLACEHOLDER_SIZE)], [None])[0]
        batch = next(batches, None)
        while True:
            size = 0 if batch is None else len(batch["labels"])
            sizes = self.accelerator.gather(torch.tensor([size], device=self.accelerator.device))
            self.sizes = sizes.reshape(-1).tolist()
            largest = max(self.sizes)
            if largest == 0:
                return
            if size < largest:
                n = largest - size
                extra = {"pixel_values": padding.expand(n, *padding.shape), "labels": torch.full((n,), IGNORE_INDEX)}
                head = batch or {key: value[:0] for key, value in extra.items()}  # no batch: an empty one
                batch = {key: torch.cat([head[key], value.to(head[key].dtype)]) for key, value in extra.items()}
            yield batch
            batch = next(batches, None) if size else None

    def gather(self, data):
        """`data` gathered from every process, without the padding rows."""
        from accelerate.utils import recursively_apply

        def real(tensor):
            rows = tensor.shape[0] // len(self.sizes)
            return torch.cat([tensor[p * rows : p * rows + min(n, rows)] for p, n in enumerate(self.sizes)])

        return recursively_apply(real, self.accelerator.gather(data))


class StreamPositionCallback(TrainerCallback):
    """Saves each process's stream position with every checkpoint, and resumes the stream from it."""

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
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.stream.position(args)), encoding="utf-8")
        os.replace(temporary, path)


def streamed_splits(
    raw, source, num_labels: int, train, evaluate, *, seed: int, shuffle_buffer_size: int, rank: int, world_size: int
):
    """(training stream, this process's share of the validation stream or None) of the streams `raw`."""
    from datasets.distributed import split_dataset_by_node

    columns, policy = (source.image_column_name, source.label_column_name), source.bad_image_policy
    training = StreamedExamples(
        raw["train"], *columns, train, num_labels, policy, split=(seed, shuffle_buffer_size, rank, world_size)
    )
    if "validation" not in raw:
        return training, None
    share = split_dataset_by_node(raw["validation"], rank=rank, world_size=world_size)
    return training, StreamedExamples(share, *columns, evaluate, num_labels, policy)
