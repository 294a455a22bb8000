"""Tracked runs need MLflow (the `track` extra, installed by `make test`)."""

import pytest

pytest.importorskip("mlflow", reason="MLflow tracking needs the 'track' extra")
