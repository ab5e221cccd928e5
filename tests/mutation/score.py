"""The mutation score of one part from `mutmut results --all true`, less the mutants listed as equivalent."""

import collections
import sys


part, results_path, equivalent_path = sys.argv[1:]
with open(equivalent_path, encoding="utf-8") as listing:
    equivalent = {line.split()[0] for line in listing if line.strip() and not line.startswith("#")}
status = {}
with open(results_path, encoding="utf-8") as results:
    for line in results:
        name, _, outcome = line.strip().rpartition(": ")
        if name.startswith("ceit_hf."):
            status[name] = outcome
counted = {name: outcome for name, outcome in status.items() if name not in equivalent}
counts = collections.Counter(counted.values())
killed = counts["killed"] + counts["timeout"]
score = killed / len(counted) if counted else float("nan")
listed = len(status) - len(counted)
print(f"{part}: {killed}/{len(counted)} killed = {score:.1%} ({dict(counts)}; {listed} listed as equivalent)")
for name, outcome in sorted(counted.items()):
    if outcome not in ("killed", "timeout"):
        print(f"  {outcome}: {name}")
