"""Mutation runs only (tests/mutation/run.sh puts this folder on PYTHONPATH): which mutated functions a test reaches.

mutmut maps each mutated function to the tests that call it by recording calls in the pytest process, so code that
only runs in the tests' subprocesses (`scripts/train.py`, `torchrun` workers, DataLoader workers) would look
unreached and its mutants would never be tested. While mutmut collects that map (`MUTANT_UNDER_TEST=stats`), every
Python process started under it writes the functions it reached to a file in `$MUTATION_HITS_DIR` when it exits;
`mutation_hits.py`, a pytest plugin in the same folder, hands them to mutmut after each test.
"""

import os


_started = False


def start() -> None:
    """Write this process's hits (and its forked children's) to `$MUTATION_HITS_DIR` when it exits."""
    global _started
    if _started or os.environ.get("MUTANT_UNDER_TEST") != "stats" or not os.environ.get("MUTATION_HITS_DIR"):
        return
    _started = True
    import atexit
    import contextlib

    if os.environ.get("MUTATION_WORK"):
        # the parent's own run reports a broken setup; a subprocess must not die of it
        with contextlib.suppress(Exception):
            _load_mutmut_config()
    atexit.register(_write_hits)
    # os._exit skips atexit: forked DataLoader workers leave through it, and so do the distributed tests' workers once
    # their results are written (tests/fsdp_worker.py)
    leave = os._exit

    def write_hits_and_leave(code):
        _write_hits()
        leave(code)

    os._exit = write_hits_and_leave


def _load_mutmut_config() -> None:
    # mutmut reads its settings from the working directory, which a subprocess may have changed
    from mutmut.configuration import config

    here = os.getcwd()
    os.chdir(os.environ["MUTATION_WORK"])
    try:
        config()
    finally:
        os.chdir(here)


def _write_hits() -> None:
    import sys

    if "mutmut.state" not in sys.modules:
        return
    hits = sys.modules["mutmut.state"].state()._stats
    if hits:
        path = os.path.join(os.environ["MUTATION_HITS_DIR"], f"{os.getpid()}.txt")
        with open(path, "a", encoding="utf-8") as file:
            file.write("".join(f"{name}\n" for name in hits))


start()
