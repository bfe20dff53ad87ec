"""Small, strictly parsed shapes of what Shoptet's OAuth servers send."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from addon_project.encryption import Secret

logger = logging.getLogger(__name__)

# Generous bounds: real OAuth tokens are ~255 chars, API tokens 38-60. Anything far beyond is
# not a token and is refused instead of stored.
MAX_TOKEN_LENGTH = 4096
# An id sent as a string: ASCII digits, at most 19 (str.isdigit also accepts '²').
_DIGITS = re.compile(r"[0-9]{1,19}")


class ResponseShapeError(ValueError):
    """A field is missing or has the wrong type; the message names the field, never its value."""


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
        eshop_id = payload.get("eshopId")
        # Documented as an int; accept a numeric string too (and say so) rather than fail an install.
        if isinstance(eshop_id, str) and _DIGITS.fullmatch(eshop_id):
            logger.warning("token response: eshopId arrived as a string; accepted")
            eshop_id = int(eshop_id)
        if isinstance(eshop_id, bool) or not isinstance(eshop_id, int) or eshop_id <= 0:
            raise ResponseShapeError("'eshopId' is missing or not a positive integer")
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
            or expires_in <= 0
        ):
            raise ResponseShapeError(
                "'expires_in' is missing or not a positive integer"
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
        project_id = project.get("id")
        # An int in the documented examples; a numeric string is accepted, nothing else.
        if isinstance(project_id, str) and _DIGITS.fullmatch(project_id):
            project_id = int(project_id)
        if isinstance(project_id, bool) or not isinstance(project_id, int):
            raise ResponseShapeError("'data.project.id' is not an integer")
        user = user if isinstance(user, dict) else {}
        email, name = user.get("email"), user.get("name")
        return cls(
            project_id=project_id,
            user_email=email[:254] if isinstance(email, str) else "",
            user_name=name[:255] if isinstance(name, str) else "",
        )
