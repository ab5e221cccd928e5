#!/usr/bin/env python
# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Write `model_cards/<variant>.md` for the five official CeiT variants.

The text comes from the template `ceit_hf/cards/ceit.md` through `ceit_hf.model_card`; never edit the generated files
by hand.

    python scripts/make_model_cards.py            # (re)write the files
    python scripts/make_model_cards.py --check    # exit 1 if a file is missing or differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ceit_hf.model_card import generated_cards


DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "model_cards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", type=Path, default=DEFAULT_OUT_DIR, help="folder of the cards")
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)

    stale = []
    for name, text in generated_cards().items():
        path = args.out_dir / name
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
    if args.check and stale:
        print(f"out of date in {args.out_dir}: {', '.join(stale)} (run scripts/make_model_cards.py)", file=sys.stderr)
        return 1
    if not stale:
        print(f"{args.out_dir}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
