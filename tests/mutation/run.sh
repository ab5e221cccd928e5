#!/usr/bin/env bash
# Mutation testing (mutmut 3.8, installed with the project's dev extras): how many of the mutants mutmut makes of a
# module the tests that cover it kill. Not part of .ci/run (too slow); docs/testing.md has the scores.
#
#   bash tests/mutation/run.sh conversion              # one part (names below), or several, or `all`
#   MUTATION_JOBS=1 bash tests/mutation/run.sh hub      # mutants tested at once (default: mutmut's, the CPU count)
#   bash tests/mutation/run.sh --survivors conversion  # the last run's surviving mutants again, against the tests
#                                                      # as they are now (new tests are measured first); the part's
#                                                      # list of test files and the package code as in that run
#                                                      # (mutmut reruns every mutant when the list changes)
#
# Each part runs in its own copy of the working tree under .mutation/<part> (git-ignored; made afresh by a full
# run), with PYTHONPATH on mutmut's mutated copy so that the tests' subprocesses (scripts/*.py, torchrun workers)
# run the mutant too. The score counts killed and timed-out mutants against every mutant not listed as equivalent
# in tests/mutation/equivalent.txt; "no tests" (code no selected test reaches) counts as surviving.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

# part | files to mutate | the tests that cover them
PARTS="
conversion|ceit_hf/conversion.py|tests/models/test_conversion.py
inference|ceit_hf/inference.py|tests/models/test_inference.py
hub|ceit_hf/hub.py|tests/hub/test_hub_upload.py
distributed|ceit_hf/distributed.py|tests/training/test_distributed.py
data-sources|ceit_hf/data/sources.py|tests/data/test_sources.py tests/data/test_data_pipeline.py tests/training/test_robustness.py tests/data/test_streaming.py tests/training/test_training.py
data-decoding|ceit_hf/data/decoding.py|tests/data/test_data_pipeline.py tests/training/test_robustness.py tests/models/test_image_processing.py
data-streams|ceit_hf/data/streams.py|tests/data/test_streaming.py
data-transforms|ceit_hf/data/transforms.py ceit_hf/data/loader.py|tests/data/test_recipe.py tests/data/test_data_pipeline.py
"
names() { echo "$PARTS" | cut -d'|' -f1 | grep .; }

# mutmut's settings for one part: a [mutmut] section added to setup.cfg of the part's fresh copy
mutmut_config() {
    python - "$1" "$2" "$3" <<'PY'
import sys
path, files, tests = sys.argv[1:]
lines = lambda words: "".join(f"\n    {word}" for word in words.split())
with open(path, "a", encoding="utf-8") as config:
    config.write(
        "\n[mutmut]\nsource_paths = ceit_hf\n"
        f"only_mutate ={lines(files)}\n"
        f"pytest_add_cli_args_test_selection ={lines(tests)}\n"
        # torch.compile cannot trace mutmut's trampolines (they keep a contextvar): those tests would fail unmutated;
        # each mutant's pytest session removes its tmp_path folders when it ends (forked sessions never prune pytest's
        # numbered folders: a full run otherwise leaves tens of GB behind)
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -p\n    mutation_hits\n    -k\n    not torch_compile\n"
        "    -o\n    tmp_path_retention_policy=none\n"
        # torch and its thread pools are not fork-safe: fork each mutant from a server that never ran a test
        "process_isolation = forkserver\n"
        # mutmut's time limit scales the tests' call time, which leaves out module-scoped fixtures (the conversion
        # tests build full-depth official models once): a constant large enough that only a real hang times out
        "timeout_constant = 30\n"
        "also_copy =\n    scripts\n    benchmarks\n    examples\n    configs\n"
    )
PY
}

survivors=false
if [ "${1:-}" = --survivors ]; then
    survivors=true
    shift
fi
if [ $# -eq 0 ]; then
    echo "usage: bash tests/mutation/run.sh [--survivors] PART [PART ...] | all" >&2
    echo "parts: $(names | tr '\n' ' ')" >&2
    exit 2
fi
requested=("$@")
[ "$1" = all ] && mapfile -t requested < <(names)

for part in "${requested[@]}"; do
    line="$(echo "$PARTS" | grep "^$part|" || true)"
    if [ -z "$line" ]; then
        echo "unknown part '$part'; expected one of: $(names | tr '\n' ' ') or all" >&2
        exit 2
    fi
    IFS='|' read -r _ files tests <<<"$line"
    work="$ROOT/.mutation/$part"
    if $survivors; then
        if [ ! -f "$work/results.txt" ]; then
            echo "no earlier run of '$part' in $work: run it in full first" >&2
            exit 2
        fi
        # the tests as they are now (mutmut copies them into its mutated tree at start); the source stays as mutated
        rm -rf "$work/tests" && cp -r "$ROOT/tests" "$work/tests"
        cp "$ROOT/tests/mutation/equivalent.txt" "$work/tests/mutation/equivalent.txt"
        mapfile -t names < <(grep -vE ": (killed|timeout)$" "$work/results.txt" | sed -E 's/^ *//; s/: [^:]*$//')
        echo "== $part: ${#names[@]} earlier survivors against the current tests"
        (
            cd "$work"
            export HF_HUB_OFFLINE=1 PYTHONPATH="$work/mutants:$work/tests/mutation/hooks" MUTATION_WORK="$work" \
                MUTATION_HITS_DIR="$work/hits" TMPDIR="$work/tmp"
            rm -rf "$work/tmp" && mkdir -p "$work/hits" "$work/tmp"
            mutmut run ${MUTATION_JOBS:+--max-children "$MUTATION_JOBS"} "${names[@]}" >"$work/survivors.log" 2>&1 || {
                tail -c 3000 "$work/survivors.log"
                exit 1
            }
            mutmut results --all true >"$work/results.txt"
        )
        rm -rf "$work/tmp"
        python "$ROOT/tests/mutation/score.py" "$part" "$work/results.txt" "$ROOT/tests/mutation/equivalent.txt"
        continue
    fi
    rm -rf "$work"  # a fresh run: mutmut keeps earlier verdicts even when the tests have changed
    mkdir -p "$work/mutants"
    # the working tree as git sees it (tracked and untracked files, not ignored ones)
    git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work"
    mutmut_config "$work/setup.cfg" "$files" "$tests"
    echo "== $part: mutating $files with $tests"
    (
        cd "$work"
        # TMPDIR inside the part's folder: what the tests' subprocesses leave there goes with the run
        export HF_HUB_OFFLINE=1 PYTHONPATH="$work/mutants:$work/tests/mutation/hooks" MUTATION_WORK="$work" \
            MUTATION_HITS_DIR="$work/hits" TMPDIR="$work/tmp"
        mkdir -p "$work/hits" "$work/tmp"
        mutmut run ${MUTATION_JOBS:+--max-children "$MUTATION_JOBS"} >"$work/run.log" 2>&1 || {
            tail -c 3000 "$work/run.log"
            exit 1
        }
        mutmut results --all true >"$work/results.txt"
    )
    rm -rf "$work/tmp"
    python "$ROOT/tests/mutation/score.py" "$part" "$work/results.txt" "$ROOT/tests/mutation/equivalent.txt"
done
