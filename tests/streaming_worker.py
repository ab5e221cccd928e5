"""One process of tests/test_streaming.py's 2-process run (torchrun, gloo, CPU): the training stream of local parquet
shards through `CeiTTrainer` with a model that records the examples of each step (an example's id is in its first
two pixels), a run resumed from one of its checkpoints, an evaluation of a validation stream with a bad image,
and an image folder indexed by the first process while the other waits (`main_process_first`). Writes what it saw
to OUT/rank<R>.json."""

import json
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


def as_tensor(images, keys=None):
    """The images as 8x8 float tensors, pixels unchanged (a blank stand-in of another size is shrunk)."""
    return [
        torch.from_numpy(np.asarray(image.convert("L").resize((8, 8), Image.NEAREST), dtype=np.float32))
        for image in images
    ]


def ids(pixel_values) -> list[int]:
    return (pixel_values[:, 0, 0] + 256 * pixel_values[:, 0, 1]).long().tolist()


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


def train(shards: str, output_dir: Path, max_steps: int, resume_from: str | None = None):
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=2,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=1,
        ignore_data_skip=True,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    source = sources.DataSource(dataset_name=shards, streaming=True)
    raw = sources.load_image_datasets(source, seed=0)
    stream, evaluation = streams.streamed_splits(
        raw,
        source,
        NUM_LABELS,
        as_tensor,
        as_tensor,
        seed=0,
        shuffle_buffer_size=4,
        rank=args.process_index,
        world_size=args.world_size,
    )
    model = Recorder()
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=stream,
        eval_dataset=evaluation,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics_fn(NUM_LABELS),
        callbacks=[streams.StreamPositionCallback(stream, resume_from=resume_from)],
    )
    trainer.train(resume_from_checkpoint=resume_from)
    return model.steps, trainer


def main():
    shards, folder, out = sys.argv[1:4]
    out = Path(out)
    steps, trainer = train(shards, out / "a", max_steps=12)  # 2 passes of 6 steps
    rank = trainer.args.process_index
    metrics = trainer.evaluate()
    resumed, _ = train(shards, out / "b", max_steps=5, resume_from=str(out / "a" / "checkpoint-2"))

    walks = []
    scan = sources.scan_image_folder
    sources.scan_image_folder = lambda *args: walks.append(args) or scan(*args)
    folder_source = sources.DataSource(train_dir=folder, verify_images_limit=0, cache_dir=str(out / "cache"))
    raw = sources.load_image_datasets(folder_source, seed=0)
    result = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "steps": steps,
        "resumed": resumed,
        "metrics": metrics,
        "position": json.loads((out / "a" / "checkpoint-2" / f"stream_state_rank{rank}.json").read_text()),
        "walked": len(walks),
        "folder_images": len(raw["train"]) + len(raw["validation"]),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
