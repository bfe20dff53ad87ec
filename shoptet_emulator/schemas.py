"""Validate answers against the official OpenAPI subset in ``openapi/``.

The subset is produced by ``openapi/extract.py`` from Shoptet's official description.
``jsonschema`` and ``referencing`` are development dependencies, so they are
imported only when a validator is built; the emulator itself runs without them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

SUBSET_PATH = (
    Path(__file__).resolve().parent / "openapi" / "shoptet-openapi-subset.json"
)
SUBSET_URI = "urn:shoptet:openapi-subset"

# The schema most documented error answers share (extract.py checks the pick still
# uses it). The spec documents no 401, 429 or 503; those are validated against it too.
COMMON_ERROR = ("/api/webhooks/{id}", "get", "404")
# The strictest documented error answer: data null, every key required, no extras.
STRICT_ERROR = ("/api/discount-coupons", "patch", "403")


@functools.cache
def load_subset() -> dict[str, Any]:
    """The extracted OpenAPI subset as a dict."""
    with SUBSET_PATH.open(encoding="utf-8") as fh:
        subset: dict[str, Any] = json.load(fh)
    return subset


@functools.cache
def webhook_events() -> frozenset[str]:
    """Event names from the spec's "Webhook event types" code list."""
    return frozenset(load_subset()["x-webhook-events"])


def is_documented(path: str, method: str, status: int | str) -> bool:
    """Whether the subset holds a response schema for this answer."""
    operation = load_subset()["paths"].get(path, {}).get(method.lower(), {})
    return str(status) in operation.get("responses", {})


def _pointer(path: str, method: str, status: int | str) -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    pointer = f"/paths/{escaped}/{method.lower()}/responses/{status}/content/application~1json/schema"
    return f"{SUBSET_URI}#{quote(pointer)}"


@functools.cache
def _validator(ref: str) -> Validator:
    from jsonschema import Draft202012Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    registry: Registry[Any] = Registry().with_resource(
        SUBSET_URI, DRAFT202012.create_resource(load_subset())
    )
    return Draft202012Validator({"$ref": ref}, registry=registry)


def validators_for(path: str, method: str, status: int) -> list[Validator]:
    """The official schemas an answer must satisfy (empty if none applies).

    ``path`` is the route template as in the spec, e.g. ``/api/webhooks/{id}``.
    Error answers must match the route's documented error schema when there is
    one, the common error schema otherwise, and always the strict error schema.
    """
    if is_documented(path, method, status):
        validators = [_validator(_pointer(path, method, status))]
    elif status >= 400:
        validators = [_validator(_pointer(*COMMON_ERROR))]
    else:
        return []
    if status >= 400:
        validators.append(_validator(_pointer(*STRICT_ERROR)))
    return validators


def validate_response(body: Any, *, path: str, method: str, status: int) -> None:
    """Raise ``jsonschema.ValidationError`` if ``body`` breaks the official schema."""
    for validator in validators_for(path, method, status):
        validator.validate(body)
