"""A LoRA adapter as a new user meets it: `train.py --lora_rank R --merge_lora` on a tiny digits model, then
`scripts/validate.py` on the adapter folder and `scripts/push_to_hub.py` of it (against tests/hub/test_hub_upload.py's
offline stand-in for the Hub)."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from test_training import digit_subset_folders

from ceit_hf import CeiTForImageClassification
from ceit_hf.evaluation import load_lora_classifier
from ceit_hf.evaluation import main as evaluate
from ceit_hf.hub import push_model_folder
from ceit_hf.training import main as train
from ceit_hf.training.model import load_image_processor


pytest.importorskip("peft")
BASE_HUB_ID = "me/ceit-digits-base"  # the base's --hub_model_id: its card names that repository


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A base CeiT trained on digits 0-4 (its card naming BASE_HUB_ID) and a LoRA adapter of it for digits 5-9."""
    root = tmp_path_factory.mktemp("lora")
    common = (
        "--max_steps 3 --eval_strategy no --save_strategy no --disable_tqdm true --report_to none "
        "--per_device_train_batch_size 8"
    ).split()
    first, rest = digit_subset_folders(root / "first", range(5)), digit_subset_folders(root / "rest", range(5, 10))
    base, adapter = root / "base", root / "adapter"
    train(
        [
            "--train_dir",
            str(first / "train"),
            "--validation_dir",
            str(first / "val"),
            "--output_dir",
            str(base),
            "--config_overrides",
            "num_encoder_blocks=2",
            "--hub_model_id",
            BASE_HUB_ID,
            *common,
        ]
    )
    train(
        [
            "--model_name_or_path",
            str(base),
            "--train_dir",
            str(rest / "train"),
            "--validation_dir",
            str(rest / "val"),
            "--output_dir",
            str(adapter),
            "--lora_rank",
            "4",
            "--merge_lora",
            "--learning_rate",
            "0.01",
            *common,
        ]
    )
    return {"root": root, "base": base, "adapter": adapter, "val": rest / "val"}


def test_lora_fine_tuning_saves_the_adapter_and_a_merged_model_with_its_logits(runs):
    """A CeiT trained on digits 0-4, LoRA-adapted to digits 5-9: only adapters and the classifier change, the saved
    adapter reproduces the run's model, and the merged folder loads with plain from_pretrained to the same logits."""
    import peft
    from safetensors.torch import load_file as load

    base, tuned = runs["base"], runs["adapter"]
    assert (tuned / "adapter_model.safetensors").is_file() and (tuned / "adapter_config.json").is_file()
    adapter = load(tuned / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)
    assert any(".lca.attention.qkv." in k for k in adapter) and any(".leff.expand." in k for k in adapter)

    adapted = peft.PeftModel.from_pretrained(CeiTForImageClassification.from_pretrained(base), tuned).eval()
    merged = CeiTForImageClassification.from_pretrained(tuned / "merged").eval()
    assert merged.config.id2label[0] == "5"  # the new labels
    original = CeiTForImageClassification.from_pretrained(base).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (merged(x).logits - adapted(x).logits).abs().max() < 1e-5
        assert (merged(x).logits - original(x).logits).abs().max() > 1e-4
    # only the adapted layers and the classifier differ from the base model (BatchNorm statistics kept)
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, original.state_dict()[k])}
    assert changed and all(
        k.startswith("classifier.")
        or k.rsplit(".", 2)[-2] in {"qkv", "proj", "expand", "reduce"}
        or k.endswith("num_batches_tracked")
        for k in changed
    )


def evaluated(model: Path, runs, *extra: str) -> dict:
    return evaluate(["--model", str(model), "--validation_dir", str(runs["val"]), "--device", "cpu", *extra])


def test_evaluating_the_adapter_folder_equals_its_merged_model(runs):
    adapter, merged = runs["adapter"], runs["adapter"] / "merged"
    of_adapter, of_merged = evaluated(adapter, runs), evaluated(merged, runs)
    assert of_adapter["num_images"] == of_merged["num_images"] == 15  # 3 validation images of each of 5 digits
    for key in ("eval_accuracy", "eval_top5_accuracy"):
        assert of_adapter[key] == of_merged[key]
    # the same model: labels and logits on the validation images
    model = load_lora_classifier(str(adapter))
    reference = CeiTForImageClassification.from_pretrained(merged).eval()
    assert model.config.id2label == reference.config.id2label and model.config.id2label[0] == "5"
    processor = load_image_processor(str(adapter), model)
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in sorted(runs["val"].rglob("*.png"))]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert (model(pixels).logits - reference(pixels).logits).abs().max() < 1e-5


def test_an_adapter_whose_base_moved_needs_base_model(runs, tmp_path):
    moved = tmp_path / "adapter"
    shutil.copytree(runs["adapter"], moved, ignore=shutil.ignore_patterns("merged"))  # no merged/config.json either
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as error:
        evaluated(moved, runs)
    message = str(error.value)
    assert message.startswith("error: ") and "\n" not in message
    assert f"base model '{tmp_path / 'gone' / 'base'}'" in message and "--base_model" in message
    # given the base: the labels come from the size of the adapter's classifier, the results are the adapter's
    results = evaluated(moved, runs, "--base_model", str(runs["base"]))
    expected = evaluated(runs["adapter"], runs)
    assert (results["eval_accuracy"], results["num_images"]) == (expected["eval_accuracy"], expected["num_images"])
    with pytest.raises(SystemExit, match="--base_model is for LoRA adapters"):
        evaluated(runs["base"], runs, "--base_model", str(runs["base"]))


def test_publishing_the_adapter_names_its_base_by_hub_id_and_leaves_merged_out(runs, fake_hub, tmp_path):  # noqa: F811
    logged = []
    push_model_folder(runs["adapter"], "me/ceit-digits-lora", endpoint=fake_hub.url, log=logged.append)
    assert fake_hub.unexpected == []
    (commit,) = fake_hub.commits
    assert not any(name.startswith("merged/") for name in commit["files"])
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json"} <= set(commit["files"])
    assert json.loads(commit["files"]["adapter_config.json"])["base_model_name_or_path"] == BASE_HUB_ID
    card = commit["files"]["README.md"].decode()
    assert yaml.safe_load(card.split("---\n", 2)[1])["base_model"] == BASE_HUB_ID
    assert f"`{runs['base']}`" not in card and f"fine-tuned from `{BASE_HUB_ID}`" in card  # (the command keeps it)
    assert f"Base model: [`{BASE_HUB_ID}`]" in card and "PeftModel.from_pretrained(base, repo_id)" in card
    local = json.loads((runs["adapter"] / "adapter_config.json").read_text())  # the folder is left as it was
    assert local["base_model_name_or_path"] == str(runs["base"])

    # someone who downloads it, with the base model at hand, evaluates the adapter as trained
    download = tmp_path / "download"
    for name, content in commit["files"].items():
        (download / name).parent.mkdir(parents=True, exist_ok=True)
        (download / name).write_bytes(content)
    results = evaluated(download, runs, "--base_model", str(runs["base"]))
    assert results["eval_accuracy"] == evaluated(runs["adapter"], runs)["eval_accuracy"]


def test_the_adapter_cards_code_loads_the_adapted_model(runs, capsys):
    """The "How to use" code of the adapter's card, run on the local folders (the card's Hub repo id and example
    image swapped for the adapter folder and a validation image)."""
    card = (runs["adapter"] / "README.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", card, re.DOTALL) if "PeftModel" in block]
    image = sorted(runs["val"].rglob("*.png"))[0]
    code = re.sub(r'^repo_id = ".*"$', f"repo_id = {str(runs['adapter'])!r}", code, count=1, flags=re.MULTILINE)
    code = re.sub(
        r"^image = load_image\(.*\)$", f"image = load_image({str(image)!r})", code, count=1, flags=re.MULTILINE
    )
    namespace = {}
    exec(compile(code, "adapter card", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    merged = CeiTForImageClassification.from_pretrained(runs["adapter"] / "merged").eval()
    with torch.no_grad():
        expected = merged(namespace["inputs"]["pixel_values"]).logits.softmax(-1)[0]
    assert torch.allclose(namespace["probabilities"], expected, atol=1e-5)
    assert printed[0].startswith(f"{merged.config.id2label[int(expected.argmax())]}: ")
