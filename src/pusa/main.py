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


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, parser=build_parser(), runners=train_cli.RUNNERS)


if __name__ == "__main__":
    sys.exit(main())
