#!/usr/bin/env bash
# The GPU suite (docs/gpu.md) in one command, for one H200 in under 8 minutes: tests/gpu (attention
# implementations, optimize_for_inference, a compiled training step, FSDP2 bf16 of every model class and the sharded
# EMA), two 300-step bf16 trainings of CeiT-T through `accelerate launch` (plain, and FSDP with the DeiT recipe and
# its sharded EMA), benchmarks/benchmark.py --levers (other forms of LeFF's and the stem's kernels, bf16, batch 256) and
# benchmarks/benchmark.py (CeiT-T/S vs DeiT-T/S in bf16 at batch 256, eager and compiled; the data loader's images/s per
# worker). Writes benchmarks/gpu_<gpu>.{json,md,log}
# (and the same three files to $OUT when it is set), rewritten after every part; a failed or timed-out part is
# recorded and the next one runs. The runner is tests/gpu/suite.py (its --help lists --parts, --budget, ...).
#
# The GPU machine is offline, with torch 2.11 and transformers 5.17 but no datasets or evaluate. Beforehand, on a
# machine with a registry (the wheels land in .whl/, ignored by git, about 14 MiB):
#     bash scripts/prepare_gpu_wheels.sh
# then on the GPU machine, with .whl/ copied beside the checkout:
#     bash scripts/gpu_check.sh
# Anywhere, the same parts at tiny sizes on the CPU, no install (CI runs it; ~25 s):
#     bash scripts/gpu_check.sh --cpu --output_dir /tmp/gpu_check
# The interpreter is $PYTHON (default: python3 on PATH); the parts run under the same one.
set -euo pipefail
cd "$(dirname "$0")/.."

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-python3}
cpu=0
for arg in "$@"; do
    if [[ $arg == --cpu ]]; then cpu=1; fi
done

# The checkout itself is the package on the GPU machine (nothing is pip-installed there); harmless where it is.
site=""
if [[ $cpu == 0 ]]; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        # Beside the preinstalled packages, not over them: /tmp/site goes first on PYTHONPATH. A failed install is
        # reported and the suite still runs (the report's package versions then show what is missing).
        if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl; then
            site=/tmp/site:
        else
            echo "[gpu_check] warning: installing .whl/*.whl failed; running on the preinstalled packages" >&2
        fi
    else
        echo "[gpu_check] warning: no .whl/ (run scripts/prepare_gpu_wheels.sh first and carry .whl):" \
            "running on the preinstalled packages" >&2
    fi
fi
export PYTHONPATH="${site}${PWD}${PYTHONPATH:+:$PYTHONPATH}"

# Standard library only, run by path: PYTHONSAFEPATH keeps ceit_hf/ itself off sys.path (Python >= 3.11).
PYTHONSAFEPATH=1 exec "$PYTHON" tests/gpu/suite.py run "$@"
