"""Run under torchrun by tests/train/test_distributed.py: trains each spec file given on the
command line into OUT/<its stem>, in the one process group torchrun made (so that the test
pays the processes' start-up once)."""

from __future__ import annotations

import sys
from pathlib import Path

from polytask.config import load_spec
from polytask.train.trainer import fit


def main(out: str, *specs: str) -> None:
    for spec in specs:
        fit(load_spec(spec), Path(out) / Path(spec).stem, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
