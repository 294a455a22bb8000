"""Slim and export a trained run: keep only what some tasks use; write it as ONNX.

:func:`slim` cuts a standalone run directory for some of a run's tasks (see
:mod:`polytask.slim.extract` for what each architecture keeps) and reports what that changed
(:mod:`polytask.slim.report`); :func:`export_onnx` writes any run, full or slim, as an ONNX
graph over the preprocessor's output.
"""

from polytask.slim.build import SLIM_REPORT, slim
from polytask.slim.export import export_onnx

__all__ = ["SLIM_REPORT", "export_onnx", "slim"]
