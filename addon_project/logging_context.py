"""What every log line says about where it came from: our request id, the tenant, the task.

One context per unit of work (an HTTP request, a Celery task), held in a `ContextVar` so threads
and tasks never see each other's. `ContextFilter` copies it onto every record; `PlainFormatter`
(development) appends `[req=… eshop=… task=…]`, `JsonFormatter` (production, `LOG_FORMAT=json`)
writes one JSON object per line with the same fields. `RequestIdMiddleware` starts a context per
request and returns its id as `X-Request-ID`; the Celery signals in `addon_project/celery.py`
carry it into the tasks a request queues.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

from django.core.signals import request_finished
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from addon_project.log_filters import redact

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only in this shape: no spaces, quotes or newlines a client could use to
# forge log lines, and nothing huge.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
# The fields a context may hold, in the order the plain format shows them.
FIELDS = ("request_id", "eshop_id", "task", "task_id")
_PLAIN_LABELS = {"request_id": "req", "eshop_id": "eshop", "task": "task"}

_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("log_context", default=_EMPTY)


def new_request_id() -> str:
    """A fresh request id (uuid4, hex)."""
    return uuid.uuid4().hex


def accepted_request_id(incoming: str | None) -> str:
    """The caller's id when it has a safe shape, otherwise a fresh one."""
    if incoming and _ACCEPTED_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_request_id()


def current() -> Mapping[str, object]:
    """The fields of the current context (read-only)."""
    return _context.get()


def current_request_id() -> str | None:
    value = _context.get().get("request_id")
    return str(value) if value is not None else None


def _checked(fields: Mapping[str, object]) -> dict[str, object]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    return {name: value for name, value in fields.items() if value is not None}


def start(**fields: object) -> Token[Mapping[str, object]]:
    """Begin a new unit of work: replace the whole context (nothing leaks from the last one)."""
    return _context.set(_checked(fields))


def bind(**fields: object) -> None:
    """Add fields (e.g. `eshop_id`) to the current unit of work; `None` values are ignored."""
    _context.set({**_context.get(), **_checked(fields)})


def reset(token: Token[Mapping[str, object]]) -> None:
    """Go back to the context before `start()` returned `token`."""
    _context.reset(token)


def clear() -> None:
    _context.set(_EMPTY)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Add fields for the duration of a block only."""
    token = _context.set({**_context.get(), **_checked(fields)})
    try:
        yield
    finally:
        _context.reset(token)


class _HasEshop(Protocol):
    @property
    def eshop(self) -> Any: ...


S = TypeVar("S", bound=_HasEshop)
P = ParamSpec("P")
R = TypeVar("R")


def eshop_scoped(
    method: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[S, P], R]:
    """Log lines inside the method carry `self.eshop`'s id; the caller's context is untouched.

    For per-tenant objects (the API client) used by code that may serve several tenants in one
    task: a persistent `bind()` there would label later lines with the wrong shop.
    """

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with bound(eshop_id=self.eshop.eshop_id):
            return method(self, *args, **kwargs)

    return wrapper


# --- Logging ------------------------------------------------------------------------------------


def _shoptet_request_id(record: logging.LogRecord) -> str | None:
    """Shoptet's `requestId` of an API error logged as an argument or as the exception.

    Duck-typed (`ShoptetAPIError.request_id`) so this module needs nothing from `shoptet_api`.
    """
    candidates: list[object] = []
    if isinstance(record.args, tuple):
        candidates.extend(record.args)
    if record.exc_info and record.exc_info[1] is not None:
        candidates.append(record.exc_info[1])
    for candidate in candidates:
        value = getattr(candidate, "request_id", None)
        if isinstance(candidate, Exception) and isinstance(value, str) and value:
            return value
    return None


class ContextFilter(logging.Filter):
    """Copies the current context onto each record (fields passed in `extra=` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if getattr(record, "shoptet_request_id", None) is None:
            found = _shoptet_request_id(record)
            if found is not None:
                record.shoptet_request_id = found
        return True


class PlainFormatter(logging.Formatter):
    """The development format, with `[req=… eshop=… task=…]` appended where they are known."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = super().formatMessage(record)
        parts = [
            f"{label}={getattr(record, name)}"
            for name, label in _PLAIN_LABELS.items()
            if getattr(record, name, None) is not None
        ]
        shoptet_id = getattr(record, "shoptet_request_id", None)
        if shoptet_id:
            parts.append(f"shoptet_req={shoptet_id}")
        return f"{message} [{' '.join(parts)}]" if parts else message

    def format(self, record: logging.LogRecord) -> str:
        # Tracebacks and exception messages may quote a URL too.
        return redact(super().format(record))


# Objects some loggers attach that must not be serialised: Django's HttpRequest (its repr shows
# the query string, install codes included) and runserver's socket.
_NOT_SERIALISED = ("request", "server_time", "color_message")


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: timestamp, level, logger, message, context and `extra=` fields."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", "%(levelname)s %(name)s %(message)s")
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", True)
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, *_NOT_SERIALISED])
        super().__init__(**kwargs)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        data = super().process_log_record(log_data)
        celery_data = data.get("data")
        if "exc_info" in data and isinstance(celery_data, dict):
            # Celery's failure lines repeat the whole traceback in `data`: once is enough.
            data["data"] = {k: v for k, v in celery_data.items() if k != "traceback"}
        # The time first (people read these too), absent fields left out, and every string, the
        # traceback and nested values included, through the same redaction as messages.
        ordered = {"timestamp": data.pop("timestamp", None), **data}
        return {
            key: _redacted(value) for key, value in ordered.items() if value is not None
        }


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


# --- Web requests -------------------------------------------------------------------------------


class RequestIdMiddleware:
    """A request id per request: in every log line of it and in the `X-Request-ID` answer header.

    First in MIDDLEWARE, so the HTTPS redirect and static files carry the header too. The context
    is cleared on `request_finished`, not when this middleware returns: Django logs 4xx/5xx
    (`django.request`) and runserver its access line after the middleware chain has finished.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = accepted_request_id(request.headers.get(REQUEST_ID_HEADER))
        start(request_id=request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def _clear_after_request(**kwargs: Any) -> None:
    clear()


request_finished.connect(_clear_after_request, dispatch_uid="logging_context.clear")
