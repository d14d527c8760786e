"""scripts/mypy_check.py: counting mypy's errors per file and holding them to the baseline (mypy itself
is not run here; CI runs the script)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mypy_check.py"
spec = importlib.util.spec_from_file_location("mypy_check", SCRIPT)
assert spec is not None and spec.loader is not None
mypy_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mypy_check)

REPORT = """\
src/pusa/a.py:3: error: Item "None" of "int | None" has no attribute "x"  [union-attr]
src/pusa/a.py:3: note: Left operand is of type "int | None"
src/pusa/a.py:9:5: error: Missing type arguments for generic type "list"  [type-arg]
src/pusa/sub/b.pyi:1: error: Name "y" is not defined  [name-defined]
src/pusa/c.py:4: note: Revealed type is "builtins.int"
Found 3 errors in 2 files (checked 5 source files)
"""


def test_counts_errors_per_file_not_notes_or_summary():
    assert mypy_check.count_errors(REPORT) == {"src/pusa/a.py": 2, "src/pusa/sub/b.pyi": 1}


def test_compare_names_files_over_and_under_the_baseline():
    counts = {"src/pusa/a.py": 2, "src/pusa/new.py": 1, "src/pusa/same.py": 4}
    baseline = {"src/pusa/a.py": 1, "src/pusa/same.py": 4, "src/pusa/fixed.py": 3}
    over, under = mypy_check.compare(counts, baseline)
    assert over == [
        "src/pusa/a.py: 2 mypy errors, the baseline allows 1",
        "src/pusa/new.py: 1 mypy error, and it is not in the baseline (which allows none)",
    ]
    assert under == ["src/pusa/fixed.py: 0 mypy errors, down from 3 in the baseline"]


def test_baseline_round_trip_drops_clean_files(tmp_path):
    path = tmp_path / "baseline.json"
    mypy_check.write_baseline(path, {"src/b.py": 2, "src/a.py": 1, "src/clean.py": 0})
    assert list(json.loads(path.read_text())) == ["src/a.py", "src/b.py"]
    assert mypy_check.load_baseline(path) == {"src/a.py": 1, "src/b.py": 2}
    assert mypy_check.load_baseline(tmp_path / "absent.json") == {}


@pytest.mark.parametrize("text", ['["src/a.py"]', '{"src/a.py": "2"}', '{"src/a.py": true}'])
def test_a_malformed_baseline_is_refused(tmp_path, text):
    path = tmp_path / "baseline.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="file path -> error count"):
        mypy_check.load_baseline(path)


def test_the_committed_baseline_is_well_formed_and_leaves_the_strict_core_out():
    baseline = mypy_check.load_baseline(mypy_check.BASELINE)
    strict = ("params", "recipes", "schedule", "conditioning", "sampling", "experts", "lora_specs")
    strict += ("presets", "request", "caching")
    assert not {f"src/pusa/{name}.py" for name in strict} & set(baseline)
    assert all(count > 0 for count in baseline.values())
