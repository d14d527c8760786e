"""`pusa`, the console script: the generation and studio commands (`pusa.cli`) and the training and
evaluation commands (`pusa.train.cli`) in one parser.

It sits on top of the layers so that neither command module imports the other: `pusa.cli` is below
`pusa.train`, which trains with the pipeline. Importing it is cheap (`pusa --help` loads no torch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import cli
from .train import cli as train_cli


def build_parser() -> argparse.ArgumentParser:
    """Every `pusa` command: generate, train, eval, serve."""
    return cli.build_parser(train_cli.add_commands)


def main(argv: Sequence[str] | None = None, whole_process: bool = False) -> int:
    """Run one `pusa` command (`argv`, default the process's); the exit status. `whole_process`: the
    command is all this process does (see `pusa.cli.main`)."""
    return cli.main(argv, parser=build_parser(), runners=train_cli.RUNNERS, whole_process=whole_process)


def console() -> int:
    """The `pusa` console script: one command, then the process exits."""
    return main(whole_process=True)


if __name__ == "__main__":
    sys.exit(console())
