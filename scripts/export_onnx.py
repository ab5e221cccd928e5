#!/usr/bin/env python
"""Export a CeiT folder to ONNX (dynamic batch) and check it against PyTorch with ONNX Runtime.

    python scripts/export_onnx.py --model runs/digits --output runs/digits/model.onnx
"""

import argparse

from ceit_hf.export import export_onnx


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (or Hub repo id)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted logit difference vs PyTorch")
    parser.add_argument("--no_check", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    result = export_onnx(args.model, args.output, opset=args.opset, check=not args.no_check, atol=args.atol,
                         trust_remote_code=args.trust_remote_code)
    print(f"Wrote {result['output']}")
    if result["max_abs_difference"] is not None:
        print(f"ONNX Runtime vs PyTorch: max |logit difference| = {result['max_abs_difference']:.2e} (batch 1 and 3)")


if __name__ == "__main__":
    main()
