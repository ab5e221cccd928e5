"""pytest plugin for mutation runs (loaded by tests/mutation/run.sh with `-p mutation_hits`):

- the mutated functions the test's subprocesses reached count as reached by the test (see sitecustomize.py beside
  it), and by every test that shares a wider fixture made in its setup;
- a mutant's tests run cheapest first. mutmut stops a mutant's tests at the first failure but hands them over in no
  set order, so a mutant that a one-second test kills could otherwise wait for a launch of two processes first. A
  test's cost, measured in mutmut's first (stats) run: its setup and call, plus the setup of each fixture wider than
  a function that it uses (paid by whichever of its tests comes first).
"""

import collections
import json
import os

import pytest
import sitecustomize


# pytest runs inside mutmut's process, which was not collecting yet when it started: forked DataLoader workers of
# the tests themselves report their hits too
sitecustomize.start()

COSTS_FILE = "test_costs.json"
measured = collections.defaultdict(float)  # test -> seconds of its setup and call, in the stats run
setups = {}  # test -> seconds of its setup (where a wide fixture it is the first to use is made)
shared = {}  # test -> its fixtures wider than a function
own = {}  # test -> those of its wide fixtures that the project's tests define (not pytest's, as tmp_path_factory)
fixture_hits = {}  # such a fixture -> the subprocesses' hits reported in the first test using it (which made it)


def _stats_run() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


def _costs_path():
    work = os.environ.get("MUTATION_WORK")
    return os.path.join(work, COSTS_FILE) if work else None


@pytest.hookimpl(tryfirst=True)  # before mutmut's own teardown hook reads the calls recorded during the test
def pytest_runtest_teardown(item, nextitem):
    folder = os.environ.get("MUTATION_HITS_DIR")
    if not _stats_run() or not folder:
        return
    from mutmut.state import state

    arrived = set()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as file:
            arrived.update(line.strip() for line in file if line.strip())
        os.remove(path)
    # A wide fixture that runs subprocesses (the FSDP tests' one `accelerate launch`) is made in the setup of the first
    # test using it: what they reached counts for every test that reads the fixture's results.
    for fixture in own.get(item.nodeid, ()):
        arrived |= fixture_hits.setdefault(fixture, set(arrived))
    state()._stats.update(arrived)


def pytest_runtest_logreport(report):
    if _stats_run() and report.when in ("setup", "call"):
        measured[report.nodeid] += report.duration
        if report.when == "setup":
            setups[report.nodeid] = report.duration


@pytest.hookimpl(trylast=True)  # after pytest's own reordering (by fixture), which would undo the order
def pytest_collection_modifyitems(session, config, items):
    if _stats_run():
        for item in items:
            definitions = getattr(item, "_fixtureinfo", None)
            wide = definitions.name2fixturedefs.items() if definitions else ()
            wide = [(name, defs[-1]) for name, defs in wide if defs and defs[-1].scope != "function"]
            shared[item.nodeid] = sorted(name for name, _ in wide)
            own[item.nodeid] = [name for name, fixture in wide if not fixture.func.__module__.startswith("_pytest")]
        return
    path = _costs_path()
    if not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as file:
        costs = json.load(file)
    items.sort(key=lambda item: costs.get(item.nodeid, 0.0))


def pytest_sessionfinish(session):
    path = _costs_path()
    if not _stats_run() or not path or not measured:
        return
    fixture_cost = collections.defaultdict(float)  # a wide fixture's making: the longest setup among its tests
    for test, fixtures in shared.items():
        for name in fixtures:
            fixture_cost[name] = max(fixture_cost[name], setups.get(test, 0.0))
    costs = {test: seconds + sum(fixture_cost[f] for f in shared.get(test, ())) for test, seconds in measured.items()}
    with open(path, "w", encoding="utf-8") as file:
        json.dump(costs, file, indent=1, sort_keys=True)
