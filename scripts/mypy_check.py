"""Type-check src/pusa with the pyproject config and hold every file to its count in mypy-baseline.json.

The pure core (the strict modules in pyproject's [tool.mypy] overrides) has no errors; the rest of the
package still has some. Rather than fixing them all at once, the baseline records how many each file has
today, and this check fails when a file has more than its count (or a file not in the baseline has any),
so the number can only go down. When a file improves, `--update` writes the lower count.

    python scripts/mypy_check.py                  # check (CI, pre-commit)
    python scripts/mypy_check.py --update         # lower the baseline to today's counts
    python scripts/mypy_check.py --update --allow-growth   # rewrite it even where counts rose (after a
                                                           # merge or a file split; say why in the commit)

Exit status: 0 no file over its baseline, 1 some file over it, 2 mypy itself failed (a config error,
a crash) or the baseline is unreadable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "mypy-baseline.json"
# `path:line: error: message  [code]` (with --show-column-numbers there would be a column too)
ERROR_LINE = re.compile(r"^(?P<path>[^:\s][^:]*\.pyi?):\d+(?::\d+)?: error: ")


def count_errors(report: str) -> Counter[str]:
    """Errors per file (POSIX paths relative to the repository root) in mypy's normal output."""
    counts: Counter[str] = Counter()
    for line in report.splitlines():
        match = ERROR_LINE.match(line)
        if match:
            counts[Path(match["path"]).as_posix()] += 1
    return counts


def _errors(count: int) -> str:
    return f"{count} mypy error{'' if count == 1 else 's'}"


def compare(counts: dict[str, int], baseline: dict[str, int]) -> tuple[list[str], list[str]]:
    """(what is over the baseline, what is under it), one sentence per file."""
    over, under = [], []
    for path in sorted(set(counts) | set(baseline)):
        have, allowed = counts.get(path, 0), baseline.get(path, 0)
        if have > allowed:
            if path in baseline:
                over.append(f"{path}: {_errors(have)}, the baseline allows {allowed}")
            else:
                over.append(f"{path}: {_errors(have)}, and it is not in the baseline (which allows none)")
        elif have < allowed:
            under.append(f"{path}: {_errors(have)}, down from {allowed} in the baseline")
    return over, under


def run_mypy() -> tuple[str, int]:
    """mypy on the package as pyproject configures it ([tool.mypy] packages), its cache in .mypy_cache."""
    from mypy import api  # imported here so that --help works without mypy installed

    os.chdir(ROOT)  # the config's mypy_path, the cache and the reported paths are relative to the root
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-pretty"])
    return stdout + stderr, status


def load_baseline(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise ValueError(f"{path.name} must be one JSON object of file path -> error count")
    return data


def write_baseline(path: Path, counts: dict[str, int]) -> None:
    path.write_text(json.dumps({k: counts[k] for k in sorted(counts) if counts[k]}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline with today's counts")
    parser.add_argument(
        "--allow-growth", action="store_true", help="with --update: also where a file has more errors"
    )
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.allow_growth and not args.update:
        parser.error("--allow-growth only goes with --update")
    try:
        baseline = load_baseline(args.baseline)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        print(f"mypy check: cannot read {args.baseline}: {error}", file=sys.stderr)
        return 2
    report, status = run_mypy()
    # mypy exits 1 when it found errors, 2 when it could not check at all (bad config, crash)
    if status not in (0, 1) or (status == 1 and not count_errors(report)):
        print(report, end="", file=sys.stderr)
        print(f"mypy check: mypy itself failed (exit status {status})", file=sys.stderr)
        return 2
    counts = count_errors(report)
    over, under = compare(counts, baseline)
    total = sum(counts.values())
    for line in under:
        print(f"improved: {line}")
    if args.update:
        if over and not args.allow_growth:
            print("\n".join(over), file=sys.stderr)
            print(
                "mypy check: not updating: the baseline may only shrink (fix these, or pass --allow-growth "
                "and say why in the commit)",
                file=sys.stderr,
            )
            return 1
        write_baseline(args.baseline, counts)
        print(f"mypy check: wrote {args.baseline.name}: {_errors(total)} in {len(counts)} files")
        return 0
    if over:
        over_files = {line.split(":", 1)[0] for line in over}
        for line in report.splitlines():
            match = ERROR_LINE.match(line)
            if match and Path(match["path"]).as_posix() in over_files:
                print(line)
        print("\n".join(over), file=sys.stderr)
        print(
            f"mypy check: FAILED: {len(over)} file(s) over the baseline in {args.baseline.name} "
            "(fix the new errors above; a file that improved can lower its count with --update)",
            file=sys.stderr,
        )
        return 1
    hint = " (run with --update to record the improvement)" if under else ""
    print(f"mypy check: ok, {_errors(total)} in {len(counts)} files, none over the baseline{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
