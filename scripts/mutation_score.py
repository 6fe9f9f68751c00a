"""Mutation score per module from mutmut's state in mutants/ (after `make mutate`): a Markdown table of killed /
tested, with the survivors' names. Mutants that were not run (functions outside the run's MUTANTS) are left out;
"no tests" counts as not killed."""

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def main(root: Path = Path("mutants")) -> None:
    rows, survivors = [], []
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status_by_exit_code[code] for code in codes.values() if code is not None)
        tested = sum(counts.values())
        if not tested:
            continue
        killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
        module = str(meta.relative_to(root))[:-len(".meta")]
        others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in ("killed", "timeout"))
        rows.append(f"| {module} | {killed} / {tested} | {100 * killed / tested:.1f}% | {others} |")
        survivors += sorted(k for k, c in codes.items() if c is not None and status_by_exit_code[c] != "killed"
                            and status_by_exit_code[c] != "timeout")
    print("| module | killed / tested | score | not killed |\n| --- | --- | --- | --- |")
    print("\n".join(rows))
    print("\nnot killed:\n" + "\n".join(survivors), file=sys.stderr)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
