"""`--streaming`: local parquet shards (and webdataset tars) read as a stream, split between 2 gloo processes and
their data-loading workers (tests/streaming_worker.py runs several jobs in one torchrun launch), resumed exactly
from a checkpoint (the same final weights as an uninterrupted run), evaluated by each process on its own share; the
bad-image policy, the checkpoint checks, the class names of integer labels and the errors of a stream in one
process."""

import io
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image

from ceit_hf.training import main, parse_args


ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c"]


def png(identity: int, truncated: bool = False) -> dict:
    """An 8x8 grey PNG whose first two pixels hold `identity` (low byte, high byte); a truncated one has a header
    and no pixels."""
    pixels = np.random.default_rng(identity).integers(0, 256, (8, 8), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = identity % 256, identity // 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    return {"bytes": data[:60] if truncated else data, "path": f"{identity}.png"}


def write_shards(folder: Path, shards: int = 4, per_shard: int = 12, validation=(6,), bad=()) -> Path:
    """Parquet shards as `datasets` writes them (ClassLabel names in the file): train-0000K-of-0000N.parquet with
    the ids 0.., and a validation-0000K-of-0000M.parquet of each size in `validation` (none: no validation split)
    with the ids 1000..; the ids in `bad` truncated."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    folder.mkdir(parents=True)
    splits = [(f"train-{k:05d}-of-{shards:05d}", range(k * per_shard, (k + 1) * per_shard)) for k in range(shards)]
    starts = np.cumsum([1000, *validation])
    for k, size in enumerate(validation):
        splits.append((f"validation-{k:05d}-of-{len(validation):05d}", range(starts[k], starts[k] + size)))
    for name, identities in splits:
        rows = {"image": [png(i, i in bad) for i in identities], "label": [i % len(CLASSES) for i in identities]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{name}.parquet")
    return folder


def torchrun(tmp_path: Path, jobs: dict, timeout: int = 240) -> None:
    """tests/streaming_worker.py's `jobs` in 2 gloo processes (one launch), writing under `tmp_path / "out"`.

    A launch that hangs (no output for `timeout` s; a normal one takes 10-20) is killed with its workers and
    run once more from a clean `out`: CPython 3.11 can deadlock in a DataLoader worker right after `fork`
    (`PyOS_AfterFork_Child` waiting for a lock another thread held at fork time; seen once in about ten runs,
    the workers then wait forever). A launch that ends with an error fails the test at once."""
    import shutil

    import psutil

    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for attempt in (1, 2):
        launch = f"-m torch.distributed.run --nproc_per_node 2 --master_port {free_port()} tests/streaming_worker.py"
        process = subprocess.Popen(
            [sys.executable, *launch.split(), str(spec)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for launched in [*psutil.Process(process.pid).children(recursive=True), process]:  # torchrun's workers
                launched.kill()  # are not in its process group
            process.communicate()
            assert attempt == 1, f"the 2-process launch hung twice (> {timeout} s each)"
            shutil.rmtree(tmp_path / "out", ignore_errors=True)
            continue
        assert process.returncode == 0, output[-6000:]
        return


def train_py(shards: Path, out: Path, workers: int, max_steps: int, save_steps: int, resume: Path | None = None):
    """The command line of a train.py run of a tiny CeiT on the stream `shards`, with no validation split."""
    argv = (
        f"--dataset_name {shards} --streaming --eval_strategy no --shuffle_buffer_size 4 --per_device_train_batch_size 4 "
        f"--config_overrides num_encoder_blocks=1 --dataloader_num_workers {workers} --max_steps {max_steps} "
        f"--save_steps {save_steps} --save_total_limit 10 --use_cpu --torch_threads 1 --seed 0 --logging_steps 100 "
        f"--disable_tqdm true --report_to none --output_dir {out}"
    ).split()
    return argv + (["--resume_from_checkpoint", str(resume)] if resume else [])


def resumed_after(folder: Path, step: int) -> bool:
    """Whether the run in `folder` trained only after `step` (a resumed run saves no checkpoint up to it)."""
    saved = [int(path.name.split("-")[1]) for path in folder.glob("checkpoint-*")]
    return bool(saved) and min(saved) > step


def same_weights(first: Path, second: Path) -> bool:
    from safetensors.torch import load_file

    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_two_processes_split_the_stream_resume_exactly_and_evaluate_their_own_shares(tmp_path):
    """2 processes x 2 data-loading workers, 4 shards of 12 examples (no validation split), batches of 4, a shuffle
    buffer of 4: each worker reads one shard a pass (3 batches), the DataLoader takes batches from its workers in
    turn. Checkpoint 5 comes where worker 0 has given its whole pass (the resumed pass is empty) and worker 1 has 4
    examples left, all in its shuffle buffer, and worker 1 is due next.

    - a pass (6 steps) gives every example once over both processes, and the next pass again, in another order;
    - resumed from checkpoint 5, each process trains on exactly the batches of the uninterrupted run, and
      train.py (`ceit_hf.training.main`, `--eval_strategy no`) resumed there ends with the same weights;
    - the validation stream (shards of 4 and 1 examples, one bad image) is decoded by each process for its own
      share only (uneven: one process runs out a step early), and both report the metrics of one process;
    - an image folder is indexed by the first process, the other reuses its index."""
    shards = write_shards(tmp_path / "shards", validation=())
    evaluation = write_shards(tmp_path / "evaluation", shards=1, per_shard=2, validation=(4, 1), bad=(1003,))
    for name in CLASSES[:2]:
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    out = tmp_path / "out"
    runs = [
        train_py(shards, out / "train", workers=2, max_steps=8, save_steps=5),
        train_py(shards, out / "resumed", workers=2, max_steps=8, save_steps=5, resume=out / "train" / "checkpoint-5"),
    ]
    torchrun(tmp_path, {"record": [str(shards), str(evaluation), str(out)], "main": runs})
    results = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]

    passes = [[sum(r["steps"][6 * p : 6 * (p + 1)], []) for r in results] for p in (0, 1)]
    for number, (first, second) in enumerate(passes):
        assert sorted(first + second) == list(range(48)), number  # every example once across the processes
    assert passes[0] != passes[1]
    for result in results:
        position = result["position"]
        assert (position["world_size"], position["num_workers"], position["next_worker"]) == (2, 2, 1)
        assert position["workers"] == {"0": {"pass": 0, "given": 12}, "1": {"pass": 0, "given": 8}}
        assert result["resumed"] == result["steps"][5:]  # the same batches in the same order
    assert resumed_after(out / "resumed", 5) and same_weights(out / "train", out / "resumed")

    # validation ids 1000..1003 (process 0) and 1004 (process 1), 1003 bad: 4 evaluated, the even ids right
    decoded = [{int(i) for i in (out / f"decoded_rank{rank}.txt").read_text().split()} - {0} for rank in (0, 1)]
    assert decoded == [{1000, 1001, 1002}, {1004}]  # (0: the blank image of a bad one or of padding)
    from streaming_worker import evaluate

    alone = evaluate(str(evaluation), tmp_path / "alone", log=tmp_path / "alone.txt")  # this one process
    for result in results:
        assert result["metrics"]["eval_bad_images"] == alone["eval_bad_images"] == 1
        assert result["metrics"]["eval_accuracy"] == alone["eval_accuracy"] == pytest.approx(3 / 4)
        assert np.isfinite(result["metrics"]["eval_loss"])  # (a padded step's loss is left out)
    assert [r["walked"] for r in results] == [1, 0] and {r["folder_images"] for r in results} == {6}


class IdAndKey:
    """The stream's transform in the tests below: each image as [its id, the augmentation key it was given]."""

    def __call__(self, images, keys):
        return [
            torch.tensor([grey.getpixel((0, 0)) + 256 * grey.getpixel((1, 0)), key])
            for grey, key in zip((image.convert("L") for image in images), keys)
        ]


def read(stream, args, batches: int) -> tuple[list, list]:
    """The first `batches` batches of `stream`'s training loader as (ids, keys) lists, and its position (as
    checkpoints save it) after each."""
    got, positions = [], []
    for batch in itertools.islice(stream.data_loader(args), batches):
        got.append(batch["pixel_values"].T.tolist())
        positions.append(json.loads(json.dumps(stream.position(args))))
    return got, positions


def process_share(shards: Path, rank: int, workers: int, batch: int, num_labels: int = len(CLASSES)):
    """(process `rank` of 2's training stream of `shards`, its TrainingArguments) as train.py makes them."""
    from transformers import TrainingArguments

    from ceit_hf.data import DataSource, load_image_datasets
    from ceit_hf.data.streams import streamed_splits

    source = DataSource(dataset_name=str(shards), streaming=True, needs_validation=False)
    raw = load_image_datasets(source, seed=0)
    stream, _ = streamed_splits(
        raw, source, num_labels, IdAndKey(), None, seed=0, shuffle_buffer_size=4, rank=rank, world_size=2
    )
    args = TrainingArguments(
        str(shards.parent / "out"), per_device_train_batch_size=batch, dataloader_num_workers=workers, use_cpu=True
    )
    return stream, args


@pytest.mark.parametrize("count, batch", [(4, 4), (3, 3)])
def test_each_process_reads_its_share_and_resumes_at_any_batch_exactly(tmp_path, count, batch):
    """A process's share of a stream of `count` shards of 12 examples, two processes (4 shards: 2 each; 3 shards:
    each reads all and keeps every other example), 6 batches a pass. Over both processes a pass gives every example
    once, the next pass in another order; each example has an augmentation key of its own. A stream resumed from the
    position after any batch gives exactly the batches (examples and keys) of the uninterrupted read."""
    shards = write_shards(tmp_path / "shards", shards=count, validation=())
    reads = {}
    for rank in (0, 1):
        stream, args = process_share(shards, rank, workers=0, batch=batch)
        reads[rank] = got, positions = read(stream, args, 12)
        for k in range(1, 12):
            resumed, args = process_share(shards, rank, workers=0, batch=batch)
            resumed.resume(positions[k - 1], args, "checkpoint")
            assert read(resumed, args, 12 - k)[0] == got[k:], (rank, k)
    ids = [[sum((b[0] for b in reads[r][0][6 * p : 6 * (p + 1)]), []) for r in (0, 1)] for p in (0, 1)]
    for number, (first, second) in enumerate(ids):
        assert sorted(first + second) == list(range(12 * count)), number
    assert ids[0] != ids[1]
    keys = [key for rank in (0, 1) for b in reads[rank][0] for key in b[1]]
    assert len(set(keys)) == len(keys) and all(0 <= key < 2**47 for key in keys)
    assert reads[0][1][5]["workers"] == {"0": {"pass": 0, "given": 6 * batch}} and reads[0][1][5]["next_worker"] == 0
    assert reads[0][1][11]["workers"] == {"0": {"pass": 1, "given": 6 * batch}}
    # 4 shards: each process reads only its own 2 (whole shards); 3: each reads all 3 and keeps its rows
    assert {len({i // 12 for i in ids[0][rank]}) for rank in (0, 1)} == {2 if count == 4 else 3}


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.filterwarnings(
    "ignore:This DataLoader will create 3 worker processes"
)  # (more than this machine's 2 cores)
def test_a_process_with_workers_resumes_mid_pass_and_after_a_workers_whole_pass(tmp_path, workers):
    """Data-loading workers with a shard each of a process's share, batches taken from the workers in turn: resumed
    after batch 2 (every worker mid-pass, worker 2 due next) or 5 (worker 0's pass given in full; with 2 workers,
    worker 1 due next with 4 examples left), the stream gives exactly the batches of the uninterrupted read."""
    shards = write_shards(tmp_path / "shards", shards=2 * workers, validation=())
    stream, args = process_share(shards, 0, workers=workers, batch=4)
    got, positions = read(stream, args, 8)
    if workers == 2:
        assert positions[4]["next_worker"] == 1
        assert positions[4]["workers"] == {"0": {"pass": 0, "given": 12}, "1": {"pass": 0, "given": 8}}
    for k in (2, 5):
        resumed, args = process_share(shards, 0, workers=workers, batch=4)
        resumed.resume(positions[k - 1], args, "checkpoint")
        assert read(resumed, args, 8 - k)[0] == got[k:], k


def test_a_stream_refuses_a_position_saved_by_another_version_or_another_reading(tmp_path):
    """A stream position resumes only with the settings it was saved under (they decide which example comes next),
    each difference named, and only from this version's checkpoints (earlier ones did not resume exactly)."""
    shards = write_shards(tmp_path / "shards", validation=())
    stream, args = process_share(shards, 0, workers=0, batch=4)
    _, positions = read(stream, args, 1)
    saved = positions[0]
    with pytest.raises(SystemExit) as refusal:
        stream.resume({**saved, "version": 1}, args, "checkpoint-5")
    assert str(refusal.value) == (
        "error: checkpoint-5 holds a stream position of an earlier ceit_hf, which did not resume exactly: expected a "
        "checkpoint of this version (or start the run afresh)."
    )
    with pytest.raises(SystemExit) as refusal:
        stream.resume({**saved, "world_size": 4, "seed": 1}, args, "checkpoint-5")
    assert str(refusal.value) == (
        "error: checkpoint-5 was saved by a stream read otherwise (world_size 4 there, 2 here, seed 1 there, 0 here): "
        "a stream resumes with the same processes, --dataloader_num_workers, shards of --dataset_name, --seed and "
        "--shuffle_buffer_size."
    )


def test_a_stream_stops_in_one_line_on_empty_shards_no_image_that_decodes_or_a_label_outside_the_model(tmp_path):
    from ceit_hf.data.streams import StreamError

    def first_batch(shards, **kwargs):
        stream, args = process_share(shards, 0, workers=0, batch=2, **kwargs)
        return read(stream, args, 1)

    empty = write_shards(tmp_path / "empty", shards=2, per_shard=0, validation=())
    with pytest.raises(StreamError) as stop:
        first_batch(empty)
    assert str(stop.value) == (
        "error: the stream gave data-loading worker 0 of process 0 no examples in pass 0: its shards [0] are empty."
    )
    bad = write_shards(tmp_path / "bad", shards=2, per_shard=3, validation=(), bad=range(6))
    with pytest.raises(StreamError) as stop:
        first_batch(bad)
    assert str(stop.value) == (
        "error: no image of the 3 examples that data-loading worker 0 of process 0 read in pass 0 (shards [0]) decodes."
    )
    shards = write_shards(tmp_path / "shards", shards=2, per_shard=3, validation=())
    with pytest.raises(ValueError) as stop:  # labels i % 3: 2 is outside 2 classes
        first_batch(shards, num_labels=2)
    assert str(stop.value) == "The stream has the label 2 outside the model's 2 classes (id2label 0..1)."


def test_a_checkpoints_stream_position_resumes_from_its_file_and_a_missing_or_foreign_one_is_refused(tmp_path):
    """The position file as checkpoints hold it (the keys of this version) resumes the stream; a missing one, or one
    saved by a stream read otherwise, is refused naming the checkpoint."""
    import json as json_

    from ceit_hf.data.streams import StreamPositionCallback

    shards = write_shards(tmp_path / "shards", validation=())
    stream, args = process_share(shards, 0, workers=0, batch=4)
    got, _ = read(stream, args, 3)
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    position = {
        "version": 2,
        "world_size": 2,
        "num_workers": 0,
        "num_shards": 4,
        "seed": 0,
        "shuffle_buffer_size": 4,
        "next_worker": 0,
        "workers": {"0": {"pass": 0, "given": 4}},
    }
    (checkpoint / "stream_state_rank0.json").write_text(json_.dumps(position))
    resumed, args = process_share(shards, 0, workers=0, batch=4)
    StreamPositionCallback(resumed, resume_from=str(checkpoint)).on_train_begin(args, None, None)
    assert read(resumed, args, 2)[0] == got[1:]

    (checkpoint / "stream_state_rank0.json").write_text(json_.dumps({**position, "num_shards": 8}))
    with pytest.raises(
        SystemExit, match=f"^error: {re.escape(str(checkpoint))} was saved by a stream read otherwise "
    ):
        StreamPositionCallback(resumed, resume_from=str(checkpoint)).on_train_begin(args, None, None)
    (checkpoint / "stream_state_rank0.json").unlink()
    path = re.escape(str(checkpoint / "stream_state_rank0.json"))
    with pytest.raises(SystemExit, match=rf"^error: cannot resume the stream: {path} is missing or damaged \(.*\)\.$"):
        StreamPositionCallback(resumed, resume_from=str(checkpoint)).on_train_begin(args, None, None)


def test_the_shuffle_buffer_holds_its_size_and_gives_every_row_once():
    from ceit_hf.data.streams import shuffle_buffer

    read = []

    def rows():
        for row in range(10):
            read.append(row)
            yield row

    shuffled = shuffle_buffer(rows(), 4, np.random.default_rng(0))
    first = next(shuffled)
    assert len(read) == 5 and first in read[:5]  # one drawn from the 4 held and the 5th
    assert sorted([first, *shuffled]) == list(range(10))


@pytest.mark.parametrize(
    "count, workers, refused",
    [
        (2, 2, "2 shard(s), 1 for each of the 2 process(es), fewer than its 2 data-loading workers"),
        (3, 2, None),
        (4, 3, "4 shard(s), 2 for each of the 2 process(es), fewer than its 3 data-loading workers"),
        (2, 1, None),
    ],
)
def test_more_workers_than_a_process_has_shards_are_refused(tmp_path, count, workers, refused):
    """Two processes: with shards that divide evenly each reads its own, and a worker needs one of those; with 3,
    each process reads all of them."""
    shards = write_shards(tmp_path / "shards", shards=count, per_shard=2, validation=())
    stream, args = process_share(shards, 0, workers=workers, batch=2)
    if refused is None:
        assert stream.data_loader(args).num_workers == workers
        return
    expected = f"error: --streaming: the training split has {refused}, which read whole shards: expected "
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}--dataloader_num_workers {count // 2} or fewer"):
        stream.data_loader(args)


def test_a_stream_without_known_features_trains_and_a_finite_one_ending_is_an_error():
    """A stream whose features `datasets` cannot know before reading (a generator's, of images) trains as any;
    the training loader of a stream that ends (it never should: its workers read without end) stops the run."""
    from ceit_hf.data.streams import StreamedExamples, StreamError, StreamLoader

    rows = [{"image": Image.open(io.BytesIO(png(i)["bytes"])), "label": i % 3} for i in range(4)]
    source = datasets.IterableDataset.from_generator(lambda: iter(rows))
    assert source.features is None
    stream = StreamedExamples(source, "image", "label", IdAndKey(), 3, split=(0, 2, 0, 1))
    examples = list(itertools.islice(iter(stream), 4))
    assert sorted(int(e["pixel_values"][0]) for e in examples) == [0, 1, 2, 3]
    with pytest.raises(StreamError) as stop:
        list(StreamLoader([], stream, 1))
    assert str(stop.value) == "error: the training stream ended, which it never should (its workers read without end)."


def test_a_validation_stream_stops_at_a_bad_image_under_stop(tmp_path):
    """--bad_image_policy stop holds for the validation stream too (skip counts a bad image and goes on)."""
    from streaming_worker import AsTensor

    from ceit_hf.data import DataSource, load_image_datasets
    from ceit_hf.data.decoding import BadImageError
    from ceit_hf.data.streams import streamed_splits

    shards = write_shards(tmp_path / "shards", shards=1, per_shard=2, validation=(3,), bad=(1001,))
    for policy in ("skip", "stop"):
        source = DataSource(dataset_name=str(shards), streaming=True, bad_image_policy=policy)
        raw = load_image_datasets(source, 0)
        _, evaluation = streamed_splits(
            raw, source, 3, None, AsTensor(), seed=0, shuffle_buffer_size=2, rank=0, world_size=1
        )
        if policy == "skip":
            assert len(list(evaluation)) == 3 and evaluation.decoder.skipped == 1
            continue
        with pytest.raises(BadImageError, match="^error: cannot decode 1001.png "):
            list(evaluation)


def test_a_process_whose_validation_share_is_empty_evaluates_nothing(tmp_path):
    """A validation split of fewer rows than processes leaves a process none: its evaluation loader ends at once
    (in step with the others, which all have nothing left either)."""
    from types import SimpleNamespace

    from streaming_worker import AsTensor
    from transformers import TrainingArguments

    from ceit_hf.data import DataSource, load_image_datasets
    from ceit_hf.data.streams import streamed_splits

    shards = write_shards(tmp_path / "shards", shards=1, per_shard=4, validation=(0,))
    source = DataSource(dataset_name=str(shards), streaming=True)
    raw = load_image_datasets(source, seed=0)
    _, evaluation = streamed_splits(
        raw, source, len(CLASSES), None, AsTensor(), seed=0, shuffle_buffer_size=4, rank=0, world_size=1
    )
    alone = SimpleNamespace(num_processes=1, device="cpu", gather=lambda tensor: tensor)  # accelerate's, one process
    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, dataloader_num_workers=0)
    assert list(evaluation.data_loader(args, alone)) == []


@pytest.mark.slow
def test_train_py_resumes_exactly_with_0_and_2_workers_mid_pass_and_at_the_end_of_a_pass(tmp_path):
    """train.py (`main`) on 2 processes, 4 shards of 12 examples, batches of 4, no validation split: resumed from
    each checkpoint below it ends with the weights of the uninterrupted run.

    - 0 workers (each process reads 2 shards, 6 batches a pass): checkpoint 3 (mid-pass), 6 (the pass given in
      full: the resumed pass is empty);
    - 2 workers (one shard each, 3 batches a pass, batches taken in turn): checkpoint 2 (each worker mid-pass),
      5 (worker 0's pass given in full, worker 1's last 4 examples in its shuffle buffer, worker 1 due next)."""
    shards = write_shards(tmp_path / "shards", validation=())
    out = tmp_path / "out"
    cases = {0: (9, 3, (3, 6)), 2: (8, 1, (2, 5))}  # workers: (max steps, save steps, checkpoints resumed from)
    runs = []
    for workers, (steps, every, resumes) in cases.items():
        runs.append(train_py(shards, out / f"{workers}", workers, steps, every))
        for k in resumes:
            checkpoint = out / f"{workers}" / f"checkpoint-{k}"
            runs.append(train_py(shards, out / f"{workers}-{k}", workers, steps, every, resume=checkpoint))
    torchrun(tmp_path, {"main": runs})
    for workers, (_, _, resumes) in cases.items():
        for k in resumes:
            resumed = out / f"{workers}-{k}"
            assert resumed_after(resumed, k) and same_weights(out / f"{workers}", resumed), (workers, k)


@pytest.mark.slow
def test_torchrun_train_py_streams_digits_shards_and_resumes_exactly(tmp_path):
    """`torchrun --nproc_per_node 2 scripts/train.py --streaming` over 4 parquet shards of 450 digits, the default
    model and batch, no validation split under `--eval_strategy no`: resumed from checkpoint 4 with
    `--resume_from_checkpoint auto` (a copy of the run's folder up to it), it ends with the uninterrupted run's
    weights."""
    import shutil

    from sklearn.datasets import load_digits

    digits = load_digits()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("0123456789"))})
    images = [Image.fromarray((image * 255 / 16).astype(np.uint8)) for image in digits.images[:450]]
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target[:450].tolist()}, features=features)
    (tmp_path / "shards").mkdir()
    for k in range(4):
        full.shard(4, k).to_parquet(tmp_path / "shards" / f"train-{k:05d}-of-00004.parquet")

    def torchrun_train_py(out: Path, *extra: str) -> None:
        command = (
            f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port {free_port()} "
            f"scripts/train.py --dataset_name {tmp_path / 'shards'} --streaming --eval_strategy no --max_steps 8 "
            f"--save_steps 4 --shuffle_buffer_size 64 --torch_threads 1 --use_cpu --report_to none --output_dir {out}"
        ).split()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        run = subprocess.run([*command, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]

    torchrun_train_py(tmp_path / "run")
    shutil.copytree(tmp_path / "run" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    copied = (tmp_path / "resumed" / "checkpoint-4" / "model.safetensors").stat().st_mtime_ns
    torchrun_train_py(tmp_path / "resumed", "--resume_from_checkpoint", "auto")
    # resumed: checkpoint 4 was not written again, as a run from the start would have
    assert (tmp_path / "resumed" / "checkpoint-4" / "model.safetensors").stat().st_mtime_ns == copied
    assert same_weights(tmp_path / "run", tmp_path / "resumed")


def test_train_py_streams_local_shards_skipping_or_stopping_at_a_bad_image(tmp_path, ceit_log):
    """train.py --streaming on local shards: a bad training image is skipped (named in a warning, the stream goes
    on), a bad validation image left out and counted in all_results.json; with `stop` the run ends naming the
    training image (no evaluation before it is read)."""
    from ceit_hf.training import checkpoint_problems

    shards = write_shards(tmp_path / "shards", shards=2, per_shard=6, validation=(4,), bad=(3, 1001))
    run = (
        f"--dataset_name {shards} --streaming --max_steps 3 --per_device_train_batch_size 4 --save_steps 2 "
        "--eval_steps 2 --shuffle_buffer_size 4 --config_overrides num_encoder_blocks=1 --dataloader_num_workers 0 "
        "--disable_tqdm true --report_to none"
    ).split()
    metrics = main([*run, "--output_dir", str(tmp_path / "out")])
    skipped = [r.getMessage() for r in ceit_log if r.getMessage().startswith("Skipping")]
    assert len(skipped) == 1 and "3.png" in skipped[0]
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["eval_bad_images"] == metrics["eval_bad_images"] == 1
    assert checkpoint_problems(tmp_path / "out" / "checkpoint-2", streams=1) == []  # its stream position included
    with pytest.raises(SystemExit, match=re.escape("error: cannot decode 3.png (")):
        main([*run, "--output_dir", str(tmp_path / "stop"), "--bad_image_policy", "stop", "--eval_strategy", "no"])


def test_resume_skips_or_refuses_a_checkpoint_without_its_stream_position(tmp_path):
    """Trainer writes trainer_state.json before the callbacks write the stream position: a checkpoint without it
    (a run killed in between) is skipped by `--resume_from_checkpoint auto`, refused by `latest` and by its path."""
    from safetensors.torch import save_file

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"weight": torch.zeros(2)}, folder / "model.safetensors")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-2" / "stream_state_rank0.json").write_text(json.dumps({"workers": {}}))
    given = ["--output_dir", str(tmp_path), "--dataset_name", "d", "--streaming", "--max_steps", "5"]
    assert parse_args([*given, "--resume_from_checkpoint", "auto"])[3].resume_from_checkpoint == str(
        tmp_path / "checkpoint-2"
    )
    expected = "stream_state_rank0.json (the stream position of process 0, written after the trainer state) is missing"
    with pytest.raises(SystemExit, match=re.escape(expected)):
        parse_args([*given, "--resume_from_checkpoint", str(tmp_path / "checkpoint-4")])
    (tmp_path / "checkpoint-2" / "stream_state_rank0.json").unlink()
    with pytest.raises(SystemExit, match="--resume_from_checkpoint latest: no complete checkpoint"):
        parse_args([*given, "--resume_from_checkpoint", "latest"])
    # without --streaming no stream position is needed
    assert parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "auto"])[3].resume_from_checkpoint


def test_a_stream_needs_a_validation_split_only_when_something_evaluates_it(tmp_path):
    from ceit_hf.data import DataSource, load_image_datasets

    shards = write_shards(tmp_path / "shards", shards=1, validation=())
    with pytest.raises(SystemExit, match=r"--streaming needs a validation split to evaluate .* --eval_strategy no"):
        load_image_datasets(DataSource(dataset_name=str(shards), streaming=True), seed=0)
    raw = load_image_datasets(DataSource(dataset_name=str(shards), streaming=True, needs_validation=False), seed=0)
    assert list(raw) == ["train"]


def write_webdataset(folder: Path, shards: int = 2, per_shard: int = 4) -> Path:
    """Webdataset tars as webdataset writes them: KEY.png and KEY.cls (the integer label as text) per example."""
    folder.mkdir(parents=True)
    for shard in range(shards):
        with tarfile.open(folder / f"train-{shard:05d}.tar", "w") as tar:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                for suffix, data in (("png", png(i)["bytes"]), ("cls", str(i % 3).encode())):
                    member = tarfile.TarInfo(f"{i:06d}.{suffix}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    return folder


def test_webdataset_tars_with_integer_labels_take_their_class_names_from_a_flag_or_classes_txt(tmp_path):
    """`datasets` reads .cls as integers (no class names): --class_names (names, or a file of one name a line),
    else classes.txt beside the shards, gives them; without either the run is refused in one line. No validation
    split: trained under --eval_strategy no."""
    from transformers import AutoConfig

    tars = write_webdataset(tmp_path / "tars")
    run = (
        f"--dataset_name {tars} --streaming --image_column_name png --label_column_name cls --eval_strategy no "
        "--max_steps 2 --per_device_train_batch_size 2 --shuffle_buffer_size 2 --save_steps 10 "
        "--config_overrides num_encoder_blocks=1 --dataloader_num_workers 0 --disable_tqdm true --report_to none"
    ).split()
    with pytest.raises(SystemExit, match="--streaming needs the class names: .* --class_names a,b,c"):
        main([*run, "--output_dir", str(tmp_path / "none")])
    main([*run, "--output_dir", str(tmp_path / "flag"), "--class_names", "cat, dog,bird"])
    (tmp_path / "names.txt").write_text("x\ny\nz\n")
    main([*run, "--output_dir", str(tmp_path / "file"), "--class_names", str(tmp_path / "names.txt")])
    (tars / "classes.txt").write_text("one\ntwo\nthree\n")
    # (with 2 data-loading workers, a tar each, and an EMA, saved although nothing evaluates it)
    main([*run, "--output_dir", str(tmp_path / "beside"), "--dataloader_num_workers", "2", "--model_ema_decay", "0.9"])
    assert (tmp_path / "beside" / "ema" / "model.safetensors").is_file()
    for name, labels in (("flag", ["cat", "dog", "bird"]), ("file", list("xyz")), ("beside", ["one", "two", "three"])):
        assert list(AutoConfig.from_pretrained(tmp_path / name).id2label.values()) == labels
    with pytest.raises(SystemExit, match="error: --class_names 'a,a': expected distinct class names"):
        main([*run, "--output_dir", str(tmp_path / "twice"), "--class_names", "a,a"])


@pytest.mark.parametrize("streaming", [True, False])
def test_an_unknown_hub_id_offline_fails_in_one_line(tmp_path, streaming):
    run = ["--dataset_name", "someone/unknown", "--max_steps", "2", "--output_dir", str(tmp_path)]
    expected = (
        "error: --dataset_name 'someone/unknown' is not found locally (no such folder, nor in the datasets cache)"
    )
    with pytest.raises(SystemExit, match=re.escape(expected) + r" and the Hub is offline \(HF_HUB_OFFLINE=1\)"):
        main(run + (["--streaming"] if streaming else []))


def test_a_worker_without_shards_or_without_examples_stops_the_run_in_one_line(tmp_path):
    """More data-loading workers than shards would leave a worker without data: refused before training. A worker
    whose shard is empty ends the run naming it instead of leaving the others to carry on."""
    shards = write_shards(tmp_path / "shards", shards=2, per_shard=4, validation=())
    run = (
        f"--dataset_name {shards} --streaming --eval_strategy no --max_steps 2 --per_device_train_batch_size 2 "
        "--config_overrides num_encoder_blocks=1 --disable_tqdm true --report_to none"
    ).split()
    expected = "fewer than its 3 data-loading workers, which read whole shards: expected --dataloader_num_workers 2"
    with pytest.raises(SystemExit, match=re.escape(expected)):
        main([*run, "--output_dir", str(tmp_path / "three"), "--dataloader_num_workers", "3"])
    empty = datasets.Dataset.from_parquet(str(shards / "train-00001-of-00002.parquet")).select([])
    empty.to_parquet(shards / "train-00001-of-00002.parquet")
    with pytest.raises(SystemExit, match=r"^error: the stream gave data-loading worker \d of process 0 no examples"):
        main([*run, "--output_dir", str(tmp_path / "empty"), "--dataloader_num_workers", "2"])


def test_streaming_flags_are_checked_before_any_data_is_read(tmp_path):
    out = ["--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"--streaming needs --max_steps N \(N > 0\)"):
        parse_args([*out, "--dataset_name", "someone/data", "--streaming"])
    with pytest.raises(SystemExit, match="--streaming reads --dataset_name"):
        parse_args([*out, "--train_dir", str(tmp_path), "--streaming", "--max_steps", "5"])
    with pytest.raises(SystemExit, match="--max_train_samples does not apply to --streaming"):
        parse_args([*out, "--dataset_name", "d", "--streaming", "--max_steps", "5", "--max_train_samples", "8"])
    _, data, _, args = parse_args([*out, "--dataset_name", "someone/data", "--streaming", "--max_steps", "5"])
    assert data.streaming and args.ignore_data_skip and args.save_strategy.value == "steps"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_streams_loaders_take_trainers_dataloader_flags(tmp_path, workers):
    """Trainer's DataLoader flags reach a stream's training and evaluation DataLoaders as they reach Trainer's own:
    the batch sizes, pinned memory, persistent workers (training only), the prefetch factor and
    `--dataloader_multiprocessing_context` ("forkserver" or "spawn": workers that are not forked from the
    multi-threaded training process), the last two only with workers."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from ceit_hf.data import sources, streams

    shards = write_shards(tmp_path / "shards", shards=2, per_shard=4, validation=(4,))
    source = sources.DataSource(dataset_name=str(shards), streaming=True)
    raw = sources.load_image_datasets(source, seed=0)
    train, evaluation = streams.streamed_splits(
        raw, source, 3, None, None, seed=0, shuffle_buffer_size=4, rank=0, world_size=1
    )
    args = TrainingArguments(
        str(tmp_path / "out"),
        dataloader_num_workers=workers,
        dataloader_multiprocessing_context="spawn",
        use_cpu=True,
        per_device_train_batch_size=3,
        per_device_eval_batch_size=5,
        dataloader_pin_memory=False,
        dataloader_persistent_workers=True,
        dataloader_prefetch_factor=3 if workers else None,
    )
    one_process = SimpleNamespace(num_processes=1)  # what the evaluation loader reads of the accelerator up front
    loaders = {"train": train.data_loader(args).loader, "evaluation": evaluation.data_loader(args, one_process).loader}
    for name, loader in loaders.items():
        assert (loader.batch_size, loader.pin_memory, loader.num_workers) == (
            3 if name == "train" else 5,
            False,
            workers,
        )
        assert loader.persistent_workers == (name == "train" and workers > 0)
        assert loader.prefetch_factor == (3 if workers else None)
        context = loader.multiprocessing_context
        assert (context.get_start_method() if context else None) == ("spawn" if workers else None)
