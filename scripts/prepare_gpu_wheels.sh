#!/usr/bin/env bash
# Downloads into .whl/ (ignored by git) the wheels that `scripts/gpu_check.sh` installs on the GPU machine, which is
# offline: run this here, once, before a device run, and carry .whl with it (docs/gpu.md).
#
# What that machine lacks, from setup.cfg's install_requires and the GPU machine's package list (one H200, offline:
# Python 3.12, torch 2.11, torchvision 0.26, transformers 5.17, accelerate 1.15,
# huggingface_hub 1.33, tokenizers 0.23, safetensors 0.8, pyarrow, pandas, xxhash, scikit-learn, ...):
#   transformers 5.24.0   the project needs >= 5.24 (the device has 5.17); its own needs are there (it checks
#                         huggingface_hub >= 1.31, tokenizers 0.23, safetensors >= 0.8, regex at import)
#   datasets              the training data (ceit_hf.data), not on the device; with dill and
#   dill, multiprocess    multiprocess, the two of its needs the device lacks (pyarrow, pandas, fsspec, xxhash,
#                         huggingface_hub are there)
#   evaluate              ceit_hf.metrics (the training job's accuracy) is an evaluate.Metric; not on the device
# accelerate (1.15), huggingface_hub (1.33 >= 1.31), torch and torchvision are there and stay as they are.
#
#     bash scripts/prepare_gpu_wheels.sh                 # the wheels above
#     bash scripts/prepare_gpu_wheels.sh pyarrow==26.0.1 # ... and more (e.g. if the report shows an import failing)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6 "$@")

rm -rf .whl
mkdir -p .whl
# --no-deps: exactly these, for CPython 3.12 on x86-64 Linux (the device), whatever this machine runs
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

ls -l .whl
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (copy it to the GPU machine with the checkout)"
