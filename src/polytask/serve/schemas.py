"""The HTTP contract: request and response bodies, and how a bad request is described.

The request body is validated by pydantic (fast, in Rust), but pydantic's own error list is
written for programmers of the server, not for its clients: a list-valued cell yields four
errors (one per allowed type), a typo in ``rows`` yields two. :func:`describe_errors` folds them
into one line per problem that names where it is (``rows[3]['age']``) and what was expected,
which is what every 4xx answer of the server carries in ``detail``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# One cell of a row: what JSON can hold in a table cell. Nested lists and objects are refused.
Cell = str | int | float | bool | None


class RequestError(Exception):
    """A request the server refuses, with the HTTP status to answer and one line saying why."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or [message]


class PredictRequest(BaseModel):
    """``{"rows": [{"column": value, ...}, ...]}``: raw rows, as in the training table."""

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Cell]] = Field(
        min_length=1,
        description="Raw rows keyed by the training table's column names. Missing columns and "
        "null values count as missing; unseen categories are allowed.",
    )
    tasks: list[str] | None = Field(
        None,
        min_length=1,
        description="Answer only these of the served tasks; only what they use is computed.",
    )


class PredictResponse(BaseModel):
    """One prediction object per row, in the order of the request's rows."""

    predictions: list[dict[str, Any]] = Field(
        description="Per row: task name -> a number (binary probability of 1, regression "
        "value), or an object (multiclass: class and probabilities; multilabel: per label "
        "probability)."
    )
    tasks: list[str]
    model: str


class ErrorResponse(BaseModel):
    """Every 4xx / 5xx answer: one line in ``detail``; ``errors`` lists each problem found."""

    detail: str
    errors: list[str] = Field(default_factory=list)


def _where(loc: tuple[int | str, ...]) -> str:
    """``('rows', 3, 'age', 'str')`` -> ``rows[3]['age']`` (the union branch is dropped)."""
    if not loc:
        return "body"
    text = str(loc[0])
    for part in loc[1:3] if loc[0] == "rows" else loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else f"[{part!r}]"
    return text


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def describe_errors(error: ValidationError) -> list[str]:
    """One readable line per problem of a :class:`PredictRequest` validation, first seen first.

    Union branches of the same cell collapse into one line, and the messages say what the
    client should send rather than which pydantic type failed.
    """
    lines: dict[str, str] = {}
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        kind = item["type"]
        where = _where(loc)
        if where in lines:
            continue
        if kind == "model_type" or (not loc and kind.endswith("_type")):
            message = (
                f'the body must be a JSON object {{"rows": [...]}}, '
                f"not {_json_type(item.get('input'))}"
            )
        elif kind == "missing" and loc == ("rows",):
            message = "'rows' is required: a list of row objects"
        elif kind == "extra_forbidden":
            message = f"unknown field {where!r} in the body; the only field is 'rows'"
        elif loc == ("rows",) and kind == "list_type":
            message = f"'rows' must be a list of row objects, not {_json_type(item.get('input'))}"
        elif loc == ("rows",) and kind == "too_short":
            message = "'rows' is empty; send at least one row"
        elif len(loc) == 2 and kind == "dict_type":
            message = (
                f"{where} must be an object mapping column names to values, "
                f"not {_json_type(item.get('input'))}"
            )
        elif len(loc) >= 3:
            message = (
                f"{where} must be a string, number, boolean or null, "
                f"not {_json_type(item.get('input'))}"
            )
        else:
            message = f"{where}: {item['msg']}"
        lines[where] = message
    return list(lines.values())
