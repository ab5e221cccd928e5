"""One process of tests/data/test_streaming.py's 2-process runs (torchrun, gloo, CPU): `python streaming_worker.py SPEC`
runs, in every process, the jobs of the JSON file SPEC in one launch:

- "record": [SHARDS, EVAL, OUT]: the training stream of the local parquet shards SHARDS through `CeiTTrainer` with a
  model that records the examples of each step (an example's id is in its first two pixels), uninterrupted and
  resumed from a checkpoint; an evaluation of the validation stream of EVAL, recording which ids each process
  decodes; and an image folder (OUT/../images) indexed by the first process while the other waits
  (`main_process_first`). Writes what it saw to OUT/rank<R>.json.
- "main": [ARGV, ...]: `ceit_hf.training.main` (what scripts/train.py calls) with each command line in turn (an
  uninterrupted run and runs resumed from its checkpoints).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import TrainingArguments, default_data_collator

from ceit_hf.data import sources, streams
from ceit_hf.training.run import _trainer_class, compute_metrics_fn


NUM_LABELS = 3
BATCH = 4


def ids(pixel_values) -> list[int]:
    return (pixel_values[:, 0, 0] + 256 * pixel_values[:, 0, 1]).long().tolist()


class AsTensor:
    """The images as 8x8 float tensors, pixels unchanged (a blank stand-in of another size is shrunk); with `log`,
    appends the id of each image it is given to that file (from whichever process or DataLoader worker calls it)."""

    def __init__(self, log: Path | None = None):
        self.log = log

    def __call__(self, images, keys=None):
        tensors = [
            torch.from_numpy(np.asarray(image.convert("L").resize((8, 8), Image.NEAREST), dtype=np.float32))
            for image in images
        ]
        if self.log is not None:
            with open(self.log, "a", encoding="utf-8") as file:
                file.writelines(f"{i}\n" for i in ids(torch.stack(tensors)))
        return tensors


class Recorder(torch.nn.Module):
    """Keeps the ids of each training batch; predicts the right class for even ids, a wrong one for odd ids."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.steps = []

    def forward(self, pixel_values, labels):
        if self.training:
            self.steps.append(ids(pixel_values))
        even = torch.tensor([i % 2 == 0 for i in ids(pixel_values)])
        guess = torch.where(even, labels.clamp(min=0), (labels.clamp(min=0) + 1) % NUM_LABELS)
        logits = F.one_hot(guess, NUM_LABELS).float() + 0 * self.scale
        return {"loss": (self.scale * pixel_values).mean(), "logits": logits}


def arguments(output_dir: Path, max_steps: int = 1, save_steps: int = 5, workers: int = 2) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=2,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=save_steps,
        eval_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=workers,
        ignore_data_skip=True,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )


def trainer_for(args, stream, evaluation=None, resume_from=None):
    return _trainer_class()(
        model=Recorder(),
        args=args,
        train_dataset=stream,
        eval_dataset=evaluation,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics_fn(NUM_LABELS),
        callbacks=[streams.StreamPositionCallback(stream, resume_from=resume_from)],
    )


def streamed(shards: str, args, evaluate=None):
    """(training stream, evaluation stream or None) of the shards folder `shards` for this process."""
    source = sources.DataSource(dataset_name=shards, streaming=True, needs_validation=False)
    raw = sources.load_image_datasets(source, seed=0)
    return streams.streamed_splits(
        raw,
        source,
        NUM_LABELS,
        AsTensor(),
        evaluate or AsTensor(),
        seed=0,
        shuffle_buffer_size=4,
        rank=args.process_index,
        world_size=args.world_size,
    )


def record(shards: str, output_dir: Path, max_steps: int, resume_from: str | None = None):
    """The ids of each training step of a run of `max_steps` (resumed from `resume_from`), and its trainer."""
    args = arguments(output_dir, max_steps)
    stream, _ = streamed(shards, args)
    trainer = trainer_for(args, stream, resume_from=resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer.model.steps, trainer


def evaluate(shards: str, output_dir: Path, log: Path) -> dict:
    """The metrics of an evaluation of the validation stream of `shards`, the ids this process decodes in `log`."""
    args = arguments(output_dir)
    stream, evaluation = streamed(shards, args, evaluate=AsTensor(log))
    return trainer_for(args, stream, evaluation).evaluate()


def record_job(shards: str, evaluation: str, out: Path) -> None:
    steps, trainer = record(shards, out / "a", max_steps=12)  # 2 passes of 6 steps
    rank = trainer.args.process_index
    resumed, _ = record(shards, out / "b", max_steps=12, resume_from=str(out / "a" / "checkpoint-5"))
    metrics = evaluate(evaluation, out / "e", log=out / f"decoded_rank{rank}.txt")

    walks = []
    scan = sources.scan_image_folder
    sources.scan_image_folder = lambda *args: walks.append(args) or scan(*args)
    folder = sources.DataSource(train_dir=str(out.parent / "images"), verify_images_limit=0, cache_dir=str(out / "c"))
    raw = sources.load_image_datasets(folder, seed=0)
    result = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "steps": steps,
        "resumed": resumed,
        "metrics": metrics,
        "position": json.loads((out / "a" / "checkpoint-5" / f"stream_state_rank{rank}.json").read_text()),
        "walked": len(walks),
        "folder_images": len(raw["train"]) + len(raw["validation"]),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def main(spec: str) -> None:
    from ceit_hf.training import main as train_py

    jobs = json.loads(Path(spec).read_text(encoding="utf-8"))
    if jobs.get("record"):
        shards, evaluation, out = jobs["record"]
        record_job(shards, evaluation, Path(out))
    for argv in jobs.get("main", []):
        train_py(argv)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1])
