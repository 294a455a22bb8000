"""Experiment tracking: a run's spec, epochs, artifacts and model, logged to MLflow on request.

Nothing here imports MLflow until a run asks to be tracked (``track.mlflow`` in the run spec or
``--mlflow URI``); without the ``track`` extra such a run fails at once with one line.
"""

from polytask.track.session import fit_tracked

__all__ = ["fit_tracked"]
