# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Streams (`--streaming`): a Hub dataset or local shards read as they are consumed, split between the processes
and their DataLoader workers, shuffled in a buffer, resumed exactly from a checkpoint's position, and evaluated by
every process on its own share."""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image
from torch.utils.data import IterableDataset as TorchIterableDataset
from transformers import TrainerCallback

from .decoding import IGNORE_INDEX, PLACEHOLDER_SIZE, ExampleDecoder, undecoded


logger = logging.getLogger("ceit_hf.data")

#
# Training: a stream (`--streaming`) is read by every process for itself, and by each of its DataLoader workers for
# itself, as "logical workers" (process rank, worker) that each read whole shards. In pass P the shards are put in an
# order drawn from (seed, P), the same on every process; process R takes every world-size-th of them from the R-th
# when their count is a multiple of the processes (else every process reads them all and keeps one example in world
# size), and its worker W every num-workers-th of those from the W-th (`worker_shards`). A pass therefore never gives
# an example twice across the processes and workers, and every worker has shards (a worker left without one is
# refused before training: it would be silent loss). A worker reads its shards one after the other, undecoded,
# through a shuffle buffer of --shuffle_buffer_size rows seeded from (seed, P, R, W), pass after pass with no end (the
# run is sized by --max_steps), so no worker runs out before the others. Shards written in random order (as webdataset
# and timm advise) shuffle best. Each row that leaves the buffer gets its index in the pass (1, 2, ...); only then is
# it decoded and augmented, the augmentation seeded from (P, R, W, index). What a worker gives is thus a function of
# (seed, P, R, W) and the data alone.
#
# Exact resume: the training process keeps, for each logical worker, (pass, index) of the last example it consumed
# from it, and which worker is due next; a checkpoint saves them (`StreamPositionCallback`, stream_state_rank<R>.json).
# A resumed worker reads its pass again from the start through the same shuffle buffer, passing over the rows up to
# that index without decoding them, so the buffer holds what it held and the resumed run sees the examples of the
# uninterrupted run in the same order, with the same augmentation; a resumed pass with nothing left goes on to the
# next pass. The cost: reading (not decoding) up to one pass of a worker's shards again at the start. torch's
# DataLoader takes batches from its workers in turn, 0, 1, ...: a resumed DataLoader starts at worker 0 although the
# next batch was due from another, so its worker i plays the logical worker (i + due) % workers. Prefetched batches
# that were not consumed are made again.
#
# Evaluation: each process reads its share of the validation split (`split_dataset_by_node`), once, in order, in its
# own DataLoader (`EvaluationLoader`): the processes pad their batches to the same size and stop together, and the
# padding is dropped from the gathered predictions before the metrics (`EvaluationLoader.gather`).

STREAM_POSITION = "__stream_position__"
STREAM_STATE_FILE = "stream_state_rank{rank}.json"
STATE_VERSION = 2  # 2: (pass, index) per logical worker and the worker due next; the reader's state before
ROWS_PER_READ = 64  # rows a worker takes from `datasets` at a time


class StreamError(Exception):
    """A training stream that cannot go on: a worker whose shards hold no example, or no image that decodes. Raised
    in a DataLoader worker, it reaches the training process with the worker's traceback as its message: the
    constructor keeps the one `error:` line of it (`run.main` ends the command line with that line)."""

    def __init__(self, message: str):
        last = next((line for line in reversed(message.splitlines()) if "error: " in line), message)
        super().__init__(last[last.find("error: ") :])


def worker_shards(num_shards: int, world_size: int, num_workers: int, seed: int, number: int, rank: int, worker: int):
    """(the shards, in reading order, that worker `worker` of `num_workers` (0: the process itself) of process `rank`
    reads in pass `number`; the step: 1, or `world_size` when every process reads them all and keeps one example in
    world size)."""
    order = np.random.default_rng([seed, number]).permutation(num_shards).tolist()
    if num_shards % world_size == 0:
        mine, step = order[rank::world_size], 1
    else:
        mine, step = order, world_size
    return mine[worker :: max(1, num_workers)], step


def read_rows(stream):
    """The rows of the `datasets` stream `stream`, read in blocks. (`IterableDataset.iter` does not split the stream
    again between the DataLoader workers, as iterating it inside a worker would.)"""
    for block in stream.iter(batch_size=ROWS_PER_READ):
        columns = list(block)
        for i in range(len(block[columns[0]]) if columns else 0):
            yield {column: block[column][i] for column in columns}


class StreamedExamples(TorchIterableDataset):
    """A `datasets` stream as `pixel_values` and `labels`, decoded (`ExampleDecoder`) and transformed example by
    example; `transform` is called as `transform([image], [key])` and returns a list of one tensor.

    `split` = (seed, shuffle buffer size, process rank, world size) for training: the stream is split between the
    processes and workers, read pass after pass without end and resumed exactly (see above); a bad image under
    "skip" is left out (the next example of the stream follows). Without `split` (evaluation) `source` is this
    process's share, read once, in order, and a bad image counts as `IGNORE_INDEX`."""

    def __init__(self, source, image_column, label_column, transform, num_labels, policy="skip", split=None):
        super().__init__()
        feature = source.features[image_column] if source.features else None
        self.decoder = ExampleDecoder(image_column, label_column, feature, policy, evaluation=split is None)
        self.source, self.transform = undecoded(source, image_column), transform
        self.num_labels, self.split = num_labels, split
        self.start = {}  # logical worker -> {"pass", "given"} to resume it after (training)
        self.offset = 0  # the logical worker that DataLoader worker 0 plays
        self.consumed = {}  # logical worker -> {"pass", "given"} of the last example the training process consumed
        self.next_worker = 0  # the logical worker whose batch the training process takes next

    def __iter__(self):
        if self.split is None:
            return (self.example(row, key=None) for row in self.source)
        return self.training_examples()

    def pass_rows(self, number: int, worker: int, num_workers: int):
        """The undecoded rows that logical worker `worker` of this process reads in pass `number`."""
        seed, _, rank, world_size = self.split
        total = self.source.num_shards
        shards, step = worker_shards(total, world_size, num_workers, seed, number, rank, worker)
        rows = (row for shard in shards for row in read_rows(self.source.shard(total, shard, contiguous=True)))
        return itertools.islice(rows, rank, None, step) if step > 1 else rows

    def training_examples(self):
        """The examples of this DataLoader worker (its logical worker), pass after pass, from its resume position."""
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # as `datasets` does in a worker: fsspec's lock of the parent process is not ours
            import fsspec.asyn

            fsspec.asyn.reset_lock()
        worker = (physical + self.offset) % num_workers
        seed, buffer_size, rank, _ = self.split
        start = self.start.get(worker) or {"pass": 0, "given": 0}
        number, skip = start["pass"], start["given"]
        while True:
            given = kept = 0
            rows = shuffle_buffer(
                self.pass_rows(number, worker, num_workers),
                buffer_size,
                np.random.default_rng([seed, number, rank, worker]),
            )
            for row in rows:
                given += 1
                if given <= skip:  # consumed before the checkpoint: it only takes its turn through the buffer
                    continue
                if (example := self.training_example(row, number, worker, given)) is not None:
                    kept += 1
                    yield example
            if given == 0:
                raise StreamError(
                    f"error: the stream gave data-loading worker {worker} of process {rank} no examples in pass "
                    f"{number}: its shards {self.worker_shard_list(number, worker, num_workers)} are empty."
                )
            if kept == 0 and skip == 0:
                raise StreamError(
                    f"error: no image of the {given} examples that data-loading worker {worker} of process {rank} read "
                    f"in pass {number} (shards {self.worker_shard_list(number, worker, num_workers)}) decodes."
                )
            number, skip = number + 1, 0  # (a resumed pass with nothing left after `skip` goes on here too)

    def worker_shard_list(self, number: int, worker: int, num_workers: int) -> list[int]:
        seed, _, rank, world_size = self.split
        return worker_shards(self.source.num_shards, world_size, num_workers, seed, number, rank, worker)[0]

    def training_example(self, row, number: int, worker: int, given: int):
        """The example of `row`, the `given`-th of pass `number` of logical worker `worker` (None for a bad image
        under "skip"), with that position. Its augmentation is seeded from (pass, process, worker, given)."""
        example = self.example(row, key=hash((number, self.split[2], worker, given)) & 0x7FFF_FFFF_FFFF)
        if example is not None:
            example[STREAM_POSITION] = (worker, number, given)
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

    def placeholder(self):
        """The pixels of the blank image that stands in for a bad one in evaluation (and pads a batch)."""
        return self.transform([Image.new("RGB", PLACEHOLDER_SIZE)], [None])[0]

    def check_workers(self, num_workers: int) -> None:
        """Refuses, before anything is read, a worker that would get no shard of its own in a pass."""
        _, _, _, world_size = self.split
        shards = self.source.num_shards
        each = shards // world_size if shards % world_size == 0 else shards
        if each < max(1, num_workers):
            raise SystemExit(
                f"error: --streaming: the training split has {shards} shard(s), {each} for each of the {world_size} "
                f"process(es), fewer than its {num_workers} data-loading workers, which read whole shards: expected "
                f"--dataloader_num_workers {each} or fewer (or the data in more shards)."
            )

    def data_loader(self, args):
        """The training DataLoader of this stream for `TrainingArguments` `args` (Trainer's own would have accelerate
        split it between the processes again), keeping the position of what the training process consumes."""
        self.check_workers(args.dataloader_num_workers)
        loader = torch.utils.data.DataLoader(
            self,
            batch_size=args.per_device_train_batch_size,
            collate_fn=collate_stream,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers else None,
            # as Trainer's own loaders: "forkserver" or "spawn" keeps workers from forking a multi-threaded process
            multiprocessing_context=args.dataloader_multiprocessing_context if args.dataloader_num_workers else None,
        )
        return StreamLoader(loader, self, max(1, args.dataloader_num_workers))

    def evaluation_loader(self, args, accelerator):
        """The evaluation DataLoader of this process's share (at most a worker per shard of it), in step with the
        other processes' (`EvaluationLoader`)."""
        from transformers import default_data_collator

        workers = min(args.dataloader_num_workers, self.source.num_shards)
        loader = torch.utils.data.DataLoader(
            self,
            batch_size=args.eval_batch_size,
            collate_fn=default_data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            prefetch_factor=args.dataloader_prefetch_factor if workers else None,
            multiprocessing_context=args.dataloader_multiprocessing_context if workers else None,
        )
        return EvaluationLoader(loader, self, accelerator)

    def settings(self, args) -> dict:
        """What a resumed run must share with the saved one to read the same stream."""
        seed, buffer_size, _, world_size = self.split
        return {
            "world_size": world_size,
            "num_workers": args.dataloader_num_workers,
            "num_shards": self.source.num_shards,
            "seed": seed,
            "shuffle_buffer_size": buffer_size,
        }

    def position(self, args) -> dict:
        return {
            "version": STATE_VERSION,
            **self.settings(args),
            "next_worker": self.next_worker,
            "workers": {str(worker): position for worker, position in sorted(self.consumed.items())},
        }

    def resume(self, saved: dict, args, source: str) -> None:
        """Starts each worker after its position in `saved` (`position()` of the checkpoint `source`), and DataLoader
        worker 0 as the worker that was due next."""
        if saved.get("version") != STATE_VERSION:
            raise SystemExit(
                f"error: {source} holds a stream position of an earlier ceit_hf, which did not resume exactly: "
                "expected a checkpoint of this version (or start the run afresh)."
            )
        ours = self.settings(args)
        theirs = {name: saved.get(name) for name in ours}
        if ours != theirs:
            differ = ", ".join(
                f"{name} {theirs[name]} there, {ours[name]} here" for name in ours if ours[name] != theirs[name]
            )
            raise SystemExit(
                f"error: {source} was saved by a stream read otherwise ({differ}): a stream resumes with the same "
                "processes, --dataloader_num_workers, shards of --dataset_name, --seed and --shuffle_buffer_size."
            )
        self.start = {int(worker): position for worker, position in saved["workers"].items()}
        self.consumed = dict(self.start)
        self.offset = self.next_worker = saved["next_worker"]


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
    from transformers import default_data_collator

    position = examples[-1][STREAM_POSITION]
    batch = default_data_collator([{k: v for k, v in e.items() if k != STREAM_POSITION} for e in examples])
    batch[STREAM_POSITION] = position
    return batch


class StreamLoader:
    """The training DataLoader of a `StreamedExamples`, handing Trainer the batches without their position, which
    it keeps in the stream (`consumed` by logical worker, and the worker due next)."""

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
    """The evaluation batches of one process's share of a validation stream, in step with the other processes: at
    each step the processes exchange their batch sizes, a process whose batch is smaller (or whose share has ended)
    pads it with blank images labelled `IGNORE_INDEX`, and all stop when all shares have ended, so that Trainer's
    evaluation loop makes the same collectives on every process. Trainer gathers the predictions, labels and losses
    of each step with `gather` (its `gather_function` for this evaluation), which drops the padding: the metrics see
    each example of the split once, a bad image as `IGNORE_INDEX`, and a padded step's loss (of no example, NaN)
    not at all."""

    def __init__(self, loader, stream: StreamedExamples, accelerator):
        self.loader, self.stream, self.accelerator = loader, stream, accelerator
        self.sizes = [0] * accelerator.num_processes  # of the current step, by process

    def __iter__(self):
        batches, padding = iter(self.loader), None
        batch = next(batches, None)
        while True:
            size = 0 if batch is None else len(batch["labels"])
            sizes = self.accelerator.gather(torch.tensor([size], device=self.accelerator.device))
            self.sizes = [int(n) for n in sizes.reshape(-1).tolist()]
            largest = max(self.sizes)
            if largest == 0:
                return
            if size < largest:
                padding = self.stream.placeholder() if padding is None else padding
                batch = padded(batch, padding, largest - size)
            yield batch
            batch = next(batches, None) if size else None

    def gather(self, data):
        """`data` (tensors of this step, the batch's rows first) gathered from every process, without the padding: of
        each process's part its first rows, as many as its batch had examples."""
        from accelerate.utils import recursively_apply

        gathered = self.accelerator.gather(data)

        def real(tensor):
            rows = tensor.shape[0] // len(self.sizes)
            parts = [tensor[p * rows : p * rows + min(n, rows)] for p, n in enumerate(self.sizes)]
            return torch.cat(parts)

        return recursively_apply(real, gathered)


def padded(batch: dict | None, pixels, count: int) -> dict:
    """`batch` with `count` more examples of the image `pixels` labelled `IGNORE_INDEX`."""
    extra = {
        "pixel_values": pixels.unsqueeze(0).expand(count, *pixels.shape),
        "labels": torch.full((count,), IGNORE_INDEX),
    }
    if batch is None:
        return {key: value.contiguous() for key, value in extra.items()}
    return {key: torch.cat([batch[key], extra[key].to(batch[key].dtype)]) for key in ("pixel_values", "labels")}


class StreamPositionCallback(TrainerCallback):
    """Saves each process's stream position with every checkpoint (`stream_state_rank<R>.json`, written whole under
    another name and renamed) and starts the stream there when the run resumes from one."""

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
    """(training stream, evaluation stream or None when `raw` has no validation split) of the streams `raw`
    (`sources.load_streams` of the `DataSource` `source`) with the transforms `train` and `evaluate`, for process
    `rank` of `world_size`: the evaluation stream is this process's share of the validation split."""
    from datasets.distributed import split_dataset_by_node

    columns = (source.image_column_name, source.label_column_name)
    split = (seed, shuffle_buffer_size, rank, world_size)
    policy = source.bad_image_policy
    training = StreamedExamples(raw["train"], *columns, train, num_labels, policy, split=split)
    if "validation" not in raw:
        return training, None
    share = split_dataset_by_node(raw["validation"], rank=rank, world_size=world_size)
    return training, StreamedExamples(share, *columns, evaluate, num_labels, policy)
