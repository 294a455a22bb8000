"""Sweeps need Optuna (the `sweep` extra, installed by `make test`)."""

import pytest

pytest.importorskip("optuna", reason="sweeps need the 'sweep' extra")
