"""pytest plugin for mutation runs: the mutated functions the test's subprocesses reached count as reached by the test.

See sitecustomize.py beside it. Loaded by tests/mutation/run.sh with `-p mutation_hits`; idle outside mutmut's stats
collection.
"""

import os

import pytest
import sitecustomize


# pytest runs inside mutmut's process, which was not collecting yet when it started: forked DataLoader workers of
# the tests themselves report their hits too
sitecustomize.start()


@pytest.hookimpl(tryfirst=True)  # before mutmut's own teardown hook reads the calls recorded during the test
def pytest_runtest_teardown(item, nextitem):
    folder = os.environ.get("MUTATION_HITS_DIR")
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not folder:
        return
    from mutmut.state import state

    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as file:
            state()._stats.update(line.strip() for line in file if line.strip())
        os.remove(path)
