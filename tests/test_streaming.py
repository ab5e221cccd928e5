"""`--streaming`: local parquet shards read as a stream, split between 2 gloo processes (one run,
tests/streaming_worker.py, that checks several things), resumed from a checkpoint's stream position, with the
bad-image policy; and train.py's streaming run and its flag checks in one process."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import free_port
from PIL import Image

from ceit_hf.training import main, parse_args


ROOT = Path(__file__).resolve().parents[1]
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


def write_shards(folder: Path, shards: int = 4, per_shard: int = 12, validation: int = 6, bad=()) -> Path:
    """Parquet shards as `datasets` writes them (ClassLabel names in the file): train-0000K-of-0000N.parquet with
    the ids 0.., validation-00000-of-00001.parquet with the ids 1000..; the ids in `bad` truncated."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    folder.mkdir(parents=True)
    splits = [(f"train-{k:05d}-of-{shards:05d}", range(k * per_shard, (k + 1) * per_shard)) for k in range(shards)]
    splits.append(("validation-00000-of-00001", range(1000, 1000 + validation)))
    for name, identities in splits:
        rows = {"image": [png(i, i in bad) for i in identities], "label": [i % len(CLASSES) for i in identities]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{name}.parquet")
    return folder


def test_two_processes_split_the_stream_reshuffle_each_pass_resume_and_evaluate(tmp_path):
    """2 processes, 4 shards of 12 examples, batches of 4, a shuffle buffer of 4 (one worker each):

    - a pass (6 steps) gives every example once over both processes, and the next pass again, in another order;
    - resumed from the checkpoint of step 2, each process goes on from its stream position: it never gives an
      example of the 2 steps before again, and leaves out exactly the 4 examples that were in its shuffle buffer
      (what a resume does not keep);
    - the evaluation stream (one bad image of 6) is read once, the bad image left out and counted on both;
    - an image folder is indexed by the first process, the other reuses its index."""
    shards = write_shards(tmp_path / "shards", bad=(1003,))
    folder = tmp_path / "images"
    for name in CLASSES[:2]:
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / name / f"{i}.png")
    launch = f"-m torch.distributed.run --nproc_per_node 2 --master_port {free_port()} tests/streaming_worker.py"
    command = [sys.executable, *launch.split(), str(shards), str(folder), str(tmp_path / "out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    results = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]

    passes = [[sum(r["steps"][6 * p : 6 * (p + 1)], []) for r in results] for p in (0, 1)]
    for number, (first, second) in enumerate(passes):
        assert sorted(first + second) == list(range(48)), number  # every example once across the processes
    assert passes[0] != passes[1]

    for rank, result in enumerate(results):
        position = result["position"]
        assert (position["world_size"], position["num_workers"], list(position["workers"])) == (2, 1, ["0"])
        assert position["workers"]["0"]["given"] == 8 and position["workers"]["0"]["pass"] == 0
        before = set(sum(result["steps"][:2], []))
        resumed = sum(result["resumed"], [])
        assert len(result["resumed"]) == 3 and len(set(resumed)) == 12, result["resumed"]
        assert not before & set(resumed), (before, resumed)
        lost = set(passes[0][rank]) - before - set(resumed)
        assert set(resumed) <= set(passes[0][rank]) and len(lost) == 4, lost

    # validation ids 1000..1005, 1003 bad: 5 evaluated, the even ids 1000, 1002, 1004 right
    for result in results:
        assert result["metrics"]["eval_bad_images"] == 1
        assert result["metrics"]["eval_accuracy"] == pytest.approx(3 / 5)
    assert [r["walked"] for r in results] == [1, 0] and {r["folder_images"] for r in results} == {6}


def test_train_py_streams_local_shards_skipping_or_stopping_at_a_bad_image(tmp_path, ceit_log):
    """train.py --streaming on local shards: a bad training image is skipped (named in a warning, the stream goes
    on), a bad validation image left out and counted in all_results.json; with `stop` the run ends naming it."""
    shards = write_shards(tmp_path / "shards", shards=2, per_shard=6, validation=4, bad=(3, 1001))
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
    assert (tmp_path / "out" / "checkpoint-2" / "stream_state_rank0.json").is_file()
    with pytest.raises(SystemExit, match=re.escape("error: cannot decode 3.png (")):
        main([*run, "--output_dir", str(tmp_path / "stop"), "--bad_image_policy", "stop"])


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
