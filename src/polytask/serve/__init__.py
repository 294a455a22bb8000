"""Serve a finished run over HTTP: ``polytask serve RUN``.

``app`` builds the FastAPI app, ``batching`` the micro-batcher that makes concurrent requests
share one model call, ``inference`` the JSON rows <-> predictor layer, ``schemas`` the
request and response bodies, and ``cascade`` the slim-then-full confidence cascade.
FastAPI and uvicorn are imported only when serving, so ``import polytask`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polytask.serve.app import ServeConfig, create_app, run_server

__all__ = ["ServeConfig", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from polytask.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'polytask.serve' has no attribute {name!r}")
