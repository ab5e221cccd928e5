#!/usr/bin/env python
"""Convert an official CeiT checkpoint (github.com/coeusguo/ceit) into a transformers folder.

    python scripts/convert_official_checkpoint.py --checkpoint ceit_tiny.pth --output_dir ceit_tiny_patch16_224
    python scripts/convert_official_checkpoint.py --checkpoint ckpt.pth --output_dir out --use_ema \\
        --push_to_hub your-name/ceit_tiny_patch16_224

The folder holds config.json (ImageNet-1k labels), model.safetensors, the image processor, the model card and
the CeiT code for `trust_remote_code=True`; it loads with `AutoModelForImageClassification.from_pretrained`.
"""

import argparse
import sys

from ceit_hf.configuration_ceit import PRESETS
from ceit_hf.conversion import CheckpointConversionError, convert_checkpoint
from ceit_hf.hub import ModelFolderError, PushError, push_model_folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official .pth file: {'model': ...} or a bare state_dict")
    parser.add_argument("--output_dir", required=True, help="folder to write")
    parser.add_argument("--use_ema", action="store_true", help="convert the 'model_ema' weights instead of 'model'")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="variant (default: inferred from tensor shapes)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub model repository")
    args = parser.parse_args(argv)
    try:
        model = convert_checkpoint(args.checkpoint, args.output_dir, use_ema=args.use_ema, preset=args.preset)
    except (CheckpointConversionError, OSError) as error:  # OSError: no such file, cannot write the folder, ...
        parser.exit(2, f"error: {error}\n")
    params = sum(p.numel() for p in model.parameters())
    print(
        f"Converted {args.checkpoint} ({model.config.preset_name or 'custom CeiT'}, {params:,} parameters) "
        f"-> {args.output_dir}"
    )
    if args.push_to_hub:
        try:
            push_model_folder(args.output_dir, args.push_to_hub)
        except (ModelFolderError, PushError) as error:
            parser.exit(2, f"error: the folder {args.output_dir} was written, but not uploaded: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
