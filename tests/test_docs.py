"""The docs stay true to the code: the CLI reference is the parser's, every docs page a docstring cites
exists (with the section it names), and the README stays short and keeps the commands CI runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"(docs/[\w/.-]+\.md)(?:, \"([^\"]+)\")?")
README_COMMANDS = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev,cluster]"',
    "pusa serve",
    "python -m pytest -q",
)


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _headings(page: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")}


def test_the_cli_reference_is_what_the_parser_says():
    reference = _cli_reference()
    committed = reference.TARGET.read_text() if reference.TARGET.exists() else ""
    assert committed == reference.render(), (
        "docs/reference/cli.md is stale: run python scripts/cli_reference.py"
    )


def test_the_cli_reference_lists_every_subcommand_and_flag():
    from pusa.main import build_parser

    text = _cli_reference().render()
    for flag in ("--model", "--prompt", "--recipe", "--frames", "--workers", "--lora", "--run-dir"):
        assert f"`{flag}`" in text, flag
    parser = build_parser()
    for command in ("generate", "serve", "train", "eval"):
        assert f"`{parser.prog} {command}`" in text, command


def test_the_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    reference = _cli_reference()
    monkeypatch.setenv("COLUMNS", "40")
    narrow = reference.render()
    monkeypatch.setenv("COLUMNS", "300")
    assert reference.render() == narrow


def test_every_docs_page_a_docstring_cites_exists_with_its_section():
    cited = []
    for source in sorted((ROOT / "src" / "pusa").rglob("*.py")):
        for match in CITATION.finditer(source.read_text()):
            cited.append((source.relative_to(ROOT), match.group(1), match.group(2)))
    assert cited, "no docstring cites a docs page: has the pattern changed?"
    missing = [(str(src), page) for src, page, _ in cited if not (ROOT / page).is_file()]
    assert missing == [], f"docstrings cite pages that do not exist: {missing}"
    no_section = [
        (str(src), page, section)
        for src, page, section in cited
        if section is not None and section not in _headings(ROOT / page)
    ]
    assert no_section == [], f"docstrings cite sections that the page lacks: {no_section}"


def test_the_readme_is_short_and_keeps_its_three_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, f"README.md has {len(readme.splitlines())} lines (at most 150)"
    lines = [line.strip() for line in readme.splitlines()]
    for command in README_COMMANDS:
        assert command in lines, f"README.md lost the command line {command!r}"


def test_ci_runs_the_readmes_test_command_and_builds_the_docs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci
    assert "mkdocs build --strict" in ci
