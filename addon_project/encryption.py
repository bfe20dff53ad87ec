"""Secrets at rest: MultiFernet over FIELD_ENCRYPTION_KEYS (newest first) and a model field on top.

Why our own field: django-cryptography cannot be imported on Django 5, and the maintained
alternatives return ciphertext on a wrong key. Here a value that no configured key can decrypt raises
`DecryptionError`; nothing ever hands `gAAAA…` to Shoptet as if it were a token.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import Expression

# The field's set/get types, as for Django's own fields (str, or str | None when null=True).
_ST = TypeVar("_ST")
_GT = TypeVar("_GT")


class DecryptionError(Exception):
    """No configured key decrypts a stored value (a wrong or missing key, or corrupted data)."""


class Secret(str):
    """A decrypted secret: behaves as `str`, but its repr never shows the value.

    Tracebacks with local variables, debuggers and `repr(obj.__dict__)` print reprs; a token must
    never reach an error report that way.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('********')"


@functools.cache
def _multi_fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty")
    fernets = []
    for position, key in enumerate(keys):
        try:
            fernets.append(Fernet(key.strip().encode()))
        except (ValueError, TypeError):
            # Name the position, never the key itself.
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEYS[{position}] is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
    return MultiFernet(fernets)


def get_fernet() -> MultiFernet:
    """The MultiFernet for the current settings: the first key encrypts, every key decrypts."""
    return _multi_fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    """Encrypt under the newest key."""
    return get_fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> Secret:
    """Decrypt with any configured key, or raise `DecryptionError` (never return ciphertext)."""
    try:
        return Secret(get_fernet().decrypt(ciphertext.encode()).decode())
    except InvalidToken:
        raise DecryptionError(
            "a stored secret cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS"
        ) from None


def reencrypt(ciphertext: str) -> str:
    """Re-encrypt a stored value under the newest key (raises `DecryptionError` if none fits)."""
    try:
        return get_fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "a stored secret cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS"
        ) from None


class EncryptedTextField(models.TextField[_ST, _GT]):
    """A text column stored as a Fernet token and read back as a `Secret`.

    Fernet output is randomised, so the column cannot be searched: lookups other than `isnull`
    are refused rather than silently matching nothing.
    """

    def get_db_prep_value(
        self,
        value: Any,
        connection: BaseDatabaseWrapper,
        prepared: bool = False,  # noqa: FBT001, FBT002 (Django's signature)
    ) -> Any:
        if value is None or isinstance(value, Expression):
            return value
        return encrypt(str(value))

    def from_db_value(
        self, value: str | None, expression: Any, connection: BaseDatabaseWrapper
    ) -> Secret | None:
        if value is None:
            return None
        try:
            return decrypt(value)
        except DecryptionError as exc:
            raise DecryptionError(f"{self.model.__name__}.{self.name}: {exc}") from None

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name != "isnull":
            raise NotImplementedError(
                f"{type(self).__name__} cannot be filtered with {lookup_name!r}: values are encrypted"
            )
        return super().get_lookup(lookup_name)
