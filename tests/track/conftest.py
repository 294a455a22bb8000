"""Tracked runs need MLflow (the `track` extra, installed by `make test`). MLflow's usage
telemetry is switched off for the tests: they must not reach the network."""

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytest.importorskip("mlflow", reason="MLflow tracking needs the 'track' extra")
