"""Bad requests as 4xx JSON answers: `{"error": "<what was wrong>", "status": <code>}`.

Helpers raise RequestError(status, message) wherever they find a problem with the request; `answers_errors`
turns it into the JSON response at the API boundary. Raising BentoMLException instead would also give a 4xx,
but BentoML 1.4 wraps its body in a list (`[{"error": ...}]`), and pydantic validation errors of the
parameters are already answered by BentoML as 400 `{"error": ..., "detail": [...]}` — so both kinds of
answer share the `error` key.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, ParamSpec, TypeVar

from starlette.responses import JSONResponse
from models.errors import SpecserveError

P = ParamSpec("P")
R = TypeVar("R")

BAD_REQUEST, NOT_FOUND, TOO_LARGE, UNSUPPORTED, UNPROCESSABLE = 400, 404, 413, 415, 422


class RequestError(SpecserveError):
    """What was wrong with a request, and the HTTP status that says so."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def answers_errors(func: Callable[P, R]) -> Callable[P, R | JSONResponse]:
    """Wrap an API method (sync or async) so a RequestError becomes its JSON response (BentoML returns a
    Response as is). functools.wraps keeps the signature and annotations, from which BentoML derives the
    API's schema."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return await func(*args, **kwargs)  # type: ignore[misc]
            except RequestError as e:
                return e.response()

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | JSONResponse:
        try:
            return func(*args, **kwargs)
        except RequestError as e:
            return e.response()

    return wrapper
