"""A request body: read with a size limit while it streams in, then parsed into rows.

Why not FastAPI's automatic body model: a malformed body must be a 400 that says what is wrong
with it (FastAPI answers 422 "JSON decode error", and takes a JSON body sent as ``text/plain``
for a string), and the size limit must apply while reading, before anything is parsed or even
held whole in memory.

Parsing a large body takes a while, so the server runs :func:`parse_rows` in a worker thread
(see :mod:`polytask.serve.app`). CPython's JSON decoder holds the GIL for a whole call, which
would stall the event loop for the length of a 32 MiB parse all the same, so the rows of a
plain ``{"rows": [...]}`` body are decoded one by one (:func:`decode_json`): between two rows
the interpreter can hand the GIL to the event loop, which keeps accepting, answering and
refusing other requests meanwhile. The result, and every error message, is exactly
``json.loads``'s: anything but that plain envelope, and any error, is handed to it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from polytask.serve.inference import MAX_REPORTED, Row
from polytask.serve.schemas import PredictRequest, RequestError, describe_errors

_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, exactly
_ENVELOPE = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"rows"[ \t\n\r]*:[ \t\n\r]*\[[ \t\n\r]*')
_DECODER = json.JSONDecoder()


def _skip_space(text: str, index: int) -> int:
    """The position of the first non-whitespace character at or after ``index``."""
    match = _SPACE.match(text, index)
    return match.end() if match is not None else index


def declared_length(request: Request) -> int | None:
    """The body size the client declares (Content-Length), or None when it does not."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes: from its
    declared length before a byte is read, else while it streams in."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise RequestError(413, f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise RequestError(413, f"the body exceeds the limit of {limit} bytes")
        body += chunk
    return bytes(body)


def decode_json(text: str) -> Any:
    """``json.loads(text)``, with the rows of a ``{"rows": [...]}`` body decoded one by one
    (see the module docstring). Same result, same errors."""
    start = _ENVELOPE.match(text)
    if start is None:
        return json.loads(text)
    rows: list[Any] = []
    index = start.end()
    try:
        if text.startswith("]", index):
            index += 1
        else:
            while True:
                row, index = _DECODER.raw_decode(text, index)
                rows.append(row)
                index = _skip_space(text, index)
                if text.startswith(",", index):
                    index = _skip_space(text, index + 1)
                    continue
                if not text.startswith("]", index):
                    raise ValueError("not the plain envelope")
                index += 1
                break
        index = _skip_space(text, index)
        if not text.startswith("}", index):
            raise ValueError("not the plain envelope")
        if _skip_space(text, index + 1) != len(text):
            raise ValueError("not the plain envelope")
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return json.loads(text)  # its result or its error, whatever we would have said
    return {"rows": rows}


def parse_rows(body: bytes, max_rows: int) -> list[Row]:
    """Bytes -> validated rows, or a :class:`RequestError` saying what is wrong and where."""
    if not body.strip():
        raise RequestError(400, 'the body is empty; send JSON {"rows": [{...}, ...]}')
    try:
        # the encoding json.loads would detect (UTF-8, or UTF-16/32 by their byte order)
        payload = decode_json(body.decode(json.detect_encoding(body), "surrogatepass"))
    except UnicodeDecodeError:
        raise RequestError(400, "malformed JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RequestError(
            400,
            f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: it is nested too deeply") from None
    if isinstance(payload, dict) and isinstance(payload.get("rows"), list):
        count = len(payload["rows"])
        if count > max_rows:  # before validating thousands of rows only to refuse them
            raise RequestError(413, f"{count} rows in one request; the limit is {max_rows}")
    try:
        return PredictRequest.model_validate(payload).rows
    except ValidationError as error:
        problems = describe_errors(error)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RequestError(422, problems[0] + more, problems[:MAX_REPORTED]) from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: it is nested too deeply") from None
