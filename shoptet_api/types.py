"""Small, strictly parsed shapes of what Shoptet's OAuth servers send."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

from addon_project.encryption import Secret

logger = logging.getLogger(__name__)

# Generous bounds: real OAuth tokens are ~255 chars, API tokens 38-60. Anything far beyond is
# not a token and is refused instead of stored.
MAX_TOKEN_LENGTH = 4096
# Shoptet documents 255-character install and login codes; allow headroom for a format change,
# refuse absurd sizes. Printable ASCII without spaces: anything else cannot be a Shoptet code.
MAX_CODE_LENGTH = 512
CODE_PATTERN = re.compile(r"[\x21-\x7e]+")
# An id sent as a string: ASCII digits, at most 19 (str.isdigit also accepts '²').
ID_DIGITS = re.compile(r"[0-9]{1,19}")
# E-shop ids are stored in a signed 64-bit column (PositiveBigIntegerField).
MAX_ID = 2**63 - 1
# Shoptet's API tokens live 30 minutes; a lifetime beyond a day is not an answer we can use.
MAX_EXPIRES_IN = 86_400
# Shoptet's answers nest a few levels; far deeper JSON is hostile (and Python's parser recurses).
MAX_JSON_DEPTH = 64
# A string (to its closing quote, or to the end when unclosed: never rescanned) or a bracket.
_JSON_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]++|\\[\s\S]?)*+(?:"|\Z)|[\[\]{}]')


class ResponseShapeError(ValueError):
    """A field is missing or has the wrong type; the message names the field, never its value."""


class JSONTooDeep(ResponseShapeError):
    """The JSON nests deeper than its reader allows."""


def is_code(value: str) -> bool:
    """Whether `value` can be a Shoptet install or login code (bounded, printable ASCII)."""
    return 0 < len(value) <= MAX_CODE_LENGTH and bool(CODE_PATTERN.fullmatch(value))


def parse_id(value: object) -> int | None:
    """An e-shop or project id from JSON or a query string: a positive int that fits the
    database column, or None."""
    if isinstance(value, str) and ID_DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= MAX_ID else None


def load_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON nested at most `max_depth` levels (a Shoptet answer, a webhook body).

    JSONTooDeep if it nests deeper, ResponseShapeError if it is not JSON (when it is both, the
    depth is reported). Bytes are decoded as `json.loads` would (UTF-8, -16 or -32). A hostile
    body costs its length and nothing more: the C parser's recursion guard stops absurd nesting,
    and the depth of what it returns is then checked level by level, without recursion.
    """
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
        except UnicodeDecodeError:
            raise ResponseShapeError("not JSON") from None
    if raw.count("[") + raw.count("{") <= max_depth:
        # Too few brackets to nest too deeply (most answers): nothing to check.
        return _parse(raw)
    try:
        value = _parse(raw)
    except JSONTooDeep:
        raise
    except ResponseShapeError:
        if _nesting_exceeds(raw, max_depth):
            raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels") from None
        raise
    if _depth_exceeds(value, max_depth):
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    return value


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply") from None
    except ValueError:
        raise ResponseShapeError("not JSON") from None


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests deeper than `limit`, walked one level at a time (no recursion)."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            below.extend([item for item in items if isinstance(item, dict | list)])
        level = below
    return False


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (one linear scan, no recursion)."""
    depth = 0
    for match in _JSON_STRING_OR_BRACKET.finditer(text):
        piece = match.group()
        if piece in "[{":
            depth += 1
            if depth > limit:
                return True
        elif piece in "]}":
            depth -= 1
    return False


def _token(payload: dict[str, Any], key: str) -> Secret:
    value = payload.get(key)
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_TOKEN_LENGTH
        or not value.isprintable()
    ):
        raise ResponseShapeError(f"{key!r} is missing or not a token")
    return Secret(value)


@dataclasses.dataclass(frozen=True)
class OAuthGrant:
    """The answer to an install-code exchange (`POST …/token`)."""

    access_token: Secret = dataclasses.field(repr=False)
    eshop_id: int
    eshop_url: str
    contact_email: str
    trial: bool | None

    @classmethod
    def from_json(cls, payload: Any) -> OAuthGrant:
        if not isinstance(payload, dict):
            raise ResponseShapeError("the body is not a JSON object")
        raw_id = payload.get("eshopId")
        # Documented as an int; accept a numeric string too (and say so) rather than fail an install.
        eshop_id = parse_id(raw_id)
        if eshop_id is None:
            raise ResponseShapeError(
                f"'eshopId' is missing or not an integer from 1 to {MAX_ID}"
            )
        if isinstance(raw_id, str):
            logger.warning("token response: eshopId arrived as a string; accepted")
        eshop_url = payload.get("eshopUrl")
        if not isinstance(eshop_url, str) or not eshop_url.startswith(
            ("https://", "http://")
        ):
            raise ResponseShapeError("'eshopUrl' is missing or not a URL")
        contact_email = payload.get("contactEmail")
        if contact_email is None:
            contact_email = ""
        if not isinstance(contact_email, str):
            raise ResponseShapeError("'contactEmail' is not a string")
        trial = payload.get("trial")
        return cls(
            access_token=_token(payload, "access_token"),
            eshop_id=eshop_id,
            eshop_url=eshop_url[:500],
            contact_email=contact_email[:254],
            trial=trial if isinstance(trial, bool) else None,
        )


@dataclasses.dataclass(frozen=True)
class ApiAccessToken:
    """The answer to `GET …/getAccessToken`."""

    access_token: Secret = dataclasses.field(repr=False)
    expires_in: int

    @classmethod
    def from_json(cls, payload: Any) -> ApiAccessToken:
        if not isinstance(payload, dict):
            raise ResponseShapeError("the body is not a JSON object")
        expires_in = payload.get("expires_in")
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int)
            or not 0 < expires_in <= MAX_EXPIRES_IN
        ):
            raise ResponseShapeError(
                f"'expires_in' is missing or not an integer from 1 to {MAX_EXPIRES_IN}"
            )
        return cls(access_token=_token(payload, "access_token"), expires_in=expires_in)


@dataclasses.dataclass(frozen=True)
class BasicEshop:
    """`getBasicEshop`: which e-shop and which admin user are behind a settings-page login."""

    project_id: int
    user_email: str
    user_name: str

    @classmethod
    def from_json(cls, payload: Any) -> BasicEshop:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            raise ResponseShapeError("the body has no 'data' object")
        project, user = data.get("project"), data.get("user")
        if not isinstance(project, dict):
            raise ResponseShapeError("'data.project' is missing")
        # An int in the documented examples; a numeric string is accepted, nothing else.
        project_id = parse_id(project.get("id"))
        if project_id is None:
            raise ResponseShapeError(
                f"'data.project.id' is not an integer from 1 to {MAX_ID}"
            )
        user = user if isinstance(user, dict) else {}
        email, name = user.get("email"), user.get("name")
        return cls(
            project_id=project_id,
            user_email=email[:254] if isinstance(email, str) else "",
            user_name=name[:255] if isinstance(name, str) else "",
        )
