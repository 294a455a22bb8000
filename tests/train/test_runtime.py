"""The allocator setting: applied once per process, and skipped when opted out."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = "from polytask.train.runtime import keep_heap_between_steps as k; print(k())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
@pytest.mark.parametrize(("value", "applied"), [("", "True"), ("0", "False"), ("off", "False")])
def test_keep_heap_applies_unless_opted_out(value, applied):
    env = {"POLYTASK_KEEP_HEAP": value, "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == applied
