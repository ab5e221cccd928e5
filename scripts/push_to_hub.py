#!/usr/bin/env python
# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Upload a converted or fine-tuned CeiT model folder (with its README.md model card) to the Hugging Face Hub.

    python scripts/push_to_hub.py --model_dir outputs/ceit-cifar10 --repo_id me/ceit-cifar10 [--private]
        [--dry_run] [--commit_message MSG] [--revision BRANCH] [--base_model_id NAMESPACE/NAME]

The token comes from HF_TOKEN or `hf auth login`, the endpoint from HF_ENDPOINT. The folder must hold config.json
and safetensors weights, or be a LoRA adapter folder (train.py --lora_rank: its merged/ model is not uploaded, and
--base_model_id names its base model's Hub repository in the uploaded adapter_config.json and card); pickled files
(*.bin, *.pt, ...) and Trainer checkpoints are skipped. ONNX exports (onnx/model.onnx) are uploaded and listed as such.
The logic is in `ceit_hf.hub`.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="folder written by save_pretrained (config, weights, card)")
    parser.add_argument("--repo_id", required=True, help="target model repository, 'namespace/name'")
    parser.add_argument("--private", action="store_true", help="create the repository as private (new repos only)")
    parser.add_argument("--dry_run", action="store_true", help="list the files that would be uploaded, upload nothing")
    parser.add_argument("--commit_message", default=None, help="commit message (default: a generic one)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main if missing)")
    parser.add_argument(
        "--base_model_id",
        default=None,
        help="adapter folders: the Hub repository of the base model (default: the one its "
        "adapter_config.json names, or the local base folder's card)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ceit_hf.hub import ModelFolderError, PushError, push_model_folder

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning
    try:
        push_model_folder(
            args.model_dir,
            args.repo_id,
            private=args.private,
            commit_message=args.commit_message,
            revision=args.revision,
            dry_run=args.dry_run,
            base_model_id=args.base_model_id,
        )
    except (ModelFolderError, PushError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
