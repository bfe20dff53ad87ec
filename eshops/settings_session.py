"""The settings-page session: a short-lived signed token carried in links and forms, not a cookie.

The settings page lives in an iframe inside the Shoptet admin, where browsers block third-party
cookies. After the Shoptet login (`basic_eshop`) proves which e-shop and admin user this is, we sign
`(eshop_id, user, language)` with a timestamp; every link and form carries it as `s`. It doubles as
the CSRF token: a cross-site page cannot read it, so it cannot forge a request that carries it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec

from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.utils import translation

from eshops.models import Eshop

SALT = "eshops.settings-session"
# The page languages: the codes of settings.LANGUAGES (one list for Django and for us).
LANGUAGES = tuple(code for code, _name in settings.LANGUAGES)

P = ParamSpec("P")


@dataclasses.dataclass(frozen=True)
class SettingsSession:
    eshop_id: int
    user_email: str
    user_name: str
    language: str
    # When the Shoptet login happened (epoch seconds). Re-signing a page's links keeps it, so a
    # session ends SHOPTET_SETTINGS_SESSION_MAX_AGE after the login, however active it is.
    logged_in_at: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def sign(self) -> str:
        return signing.dumps(dataclasses.astuple(self), salt=SALT, compress=True)

    @classmethod
    def load(cls, token: str) -> SettingsSession | None:
        """The session in `token`, or None if it is forged, malformed or older than the max age."""
        max_age = settings.SHOPTET_SETTINGS_SESSION_MAX_AGE
        try:
            values = signing.loads(token, salt=SALT, max_age=max_age)
        except signing.BadSignature:  # includes SignatureExpired
            return None
        if not isinstance(values, list) or len(values) != 5:
            return None
        eshop_id, email, name, language, logged_in_at = values
        if (
            not isinstance(eshop_id, int)
            or language not in LANGUAGES
            or not isinstance(logged_in_at, int)
        ):
            return None
        if time.time() - logged_in_at > max_age:
            return None
        return cls(
            eshop_id=eshop_id,
            user_email=str(email),
            user_name=str(name),
            language=language,
            logged_in_at=logged_in_at,
        )


class SettingsRequest(HttpRequest):
    """A request that passed `settings_session_required`."""

    eshop: Eshop
    settings_session: SettingsSession


def settings_session_required(
    view: Callable[Concatenate[SettingsRequest, P], HttpResponse],
) -> Callable[Concatenate[HttpRequest, P], HttpResponse]:
    """Resolve `s` to a valid session and its active e-shop, or answer 403; activates its language."""

    def wrapper(
        request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs
    ) -> HttpResponse:
        from eshops.views import error_page  # the view module imports this one

        token = (
            request.POST.get("s") if request.method == "POST" else request.GET.get("s")
        )
        session = SettingsSession.load(token or "")
        if session is None:
            return error_page(request, 403, "session", language=request.GET.get("lang"))
        eshop = Eshop.objects.filter(
            eshop_id=session.eshop_id, status=Eshop.Status.ACTIVE
        ).first()
        if eshop is None:
            return error_page(request, 403, "not_installed", language=session.language)
        typed: Any = request
        typed.eshop, typed.settings_session = eshop, session
        with translation.override(session.language):
            return view(typed, *args, **kwargs)

    functools.update_wrapper(wrapper, view)
    return wrapper
