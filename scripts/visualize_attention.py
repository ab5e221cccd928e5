#!/usr/bin/env python
"""Draw what a CeiT image classifier looks at in one figure: the image, the attention rollout over it, each encoder
block's class-token attention, and the LCA's weights over the blocks (docs/attention.md).

    python scripts/visualize_attention.py --model runs/digits --image digit.png --output attention.png [--head 0]
"""

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved CeiT folder or Hub model id.")
    parser.add_argument("--image", required=True, help="The image file.")
    parser.add_argument("--output", default="attention.png", help="The PNG to write (default: attention.png).")
    parser.add_argument("--head", type=int, default=None, help="One attention head (default: the mean over heads).")
    parser.add_argument("--trust_remote_code", action="store_true", help="Load the model's own code from the Hub.")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(args.image):
        sys.exit(f"error: --image {args.image!r} does not exist.")
    try:
        image = Image.open(args.image)
        image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        sys.exit(f"error: --image {args.image!r} is not a readable image ({type(error).__name__}: {error}).")

    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from ceit_hf.visualization import attention_figure

    model = AutoModelForImageClassification.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    # --head picks the same head in the blocks and in the LCA, so it must exist in both
    heads = min(model.config.encoder_num_heads, model.config.lca_encoder_num_heads)
    if args.head is not None and not 0 <= args.head < heads:
        sys.exit(
            f"error: --head {args.head} is out of range: use 0..{heads - 1} (the blocks have "
            f"{model.config.encoder_num_heads} attention heads, the LCA {model.config.lca_encoder_num_heads})."
        )
    figure, _ = attention_figure(model, processor, image, head=args.head)
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
