#!/usr/bin/env python
"""Export a CeiT folder to ONNX (dynamic batch) and check it against PyTorch with ONNX Runtime.

    python scripts/export_onnx.py --model runs/digits          # writes runs/digits/onnx/model.onnx
    python scripts/export_onnx.py --model ceit-hf/ceit_tiny_patch16_224 --trust_remote_code --output ceit_t.onnx

The default place, onnx/model.onnx in the model folder, is where Optimum and the Hub expect it; scripts/push_to_hub.py
uploads it with the model and says so.
"""

import argparse

from ceit_hf.export import default_onnx_path, export_onnx


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (or Hub repo id)")
    parser.add_argument(
        "--output",
        default=None,
        help="the .onnx file to write (default: MODEL/onnx/model.onnx; needed for a Hub repo id)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted logit difference vs PyTorch")
    parser.add_argument("--no_check", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    try:
        output = args.output or default_onnx_path(args.model)
    except ValueError as error:
        parser.error(str(error))
    result = export_onnx(
        args.model,
        str(output),
        opset=args.opset,
        check=not args.no_check,
        atol=args.atol,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"Wrote {result['output']}")
    if result["max_abs_difference"] is not None:
        print(f"ONNX Runtime vs PyTorch: max |logit difference| = {result['max_abs_difference']:.2e} (batch 1 and 3)")


if __name__ == "__main__":
    main()
