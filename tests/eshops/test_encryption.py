"""Secrets at rest: encrypted columns, loud failure on a wrong key, key rotation."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from addon_project.encryption import DecryptionError, Secret, decrypt, encrypt
from eshops.models import Eshop

pytestmark = pytest.mark.django_db


def raw_column(eshop: Eshop) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oauth_access_token FROM eshops_eshop WHERE id = %s", [eshop.pk]
        )
        return str(cursor.fetchone()[0])


def test_raw_column_holds_no_plaintext(eshop_factory: Callable[..., Eshop]) -> None:
    eshop = eshop_factory(oauth_access_token="plain-oauth-token-value-123")

    raw = raw_column(eshop)

    assert "plain-oauth-token-value-123" not in raw
    assert raw.startswith("gAAAA")
    assert (
        Eshop.objects.get(pk=eshop.pk).oauth_access_token
        == "plain-oauth-token-value-123"
    )


def test_same_value_encrypts_differently_each_time() -> None:
    assert encrypt("same") != encrypt("same")


def test_wrong_key_fails_loudly_and_never_returns_ciphertext(
    eshop_factory: Callable[..., Eshop], settings: Any
) -> None:
    eshop = eshop_factory(oauth_access_token="secret-value")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(DecryptionError) as excinfo:
        Eshop.objects.get(pk=eshop.pk)

    message = str(excinfo.value)
    assert "Eshop.oauth_access_token" in message
    assert "gAAAA" not in message
    assert raw_column(eshop) not in message


def test_old_key_still_decrypts_after_a_new_key_is_added(
    eshop_factory: Callable[..., Eshop], settings: Any
) -> None:
    eshop = eshop_factory(oauth_access_token="before-rotation")
    old_keys = list(settings.FIELD_ENCRYPTION_KEYS)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *old_keys]

    assert Eshop.objects.get(pk=eshop.pk).oauth_access_token == "before-rotation"


def test_reencrypt_command_moves_every_value_to_the_newest_key(
    eshop_factory: Callable[..., Eshop], settings: Any
) -> None:
    eshops = [eshop_factory(oauth_access_token=f"token-{i}") for i in range(7)]
    old_keys = list(settings.FIELD_ENCRYPTION_KEYS)
    new_key = Fernet.generate_key().decode()
    before = {e.pk: raw_column(e) for e in eshops}
    settings.FIELD_ENCRYPTION_KEYS = [new_key, *old_keys]
    out = StringIO()

    call_command("reencrypt_secrets", "--batch-size", "3", stdout=out)

    assert "re-encrypted 7 values" in out.getvalue()
    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # the old key is gone now
    for i, e in enumerate(eshops):
        assert raw_column(e) != before[e.pk]
        assert Eshop.objects.get(pk=e.pk).oauth_access_token == f"token-{i}"


def test_reencrypt_command_is_harmless_to_run_twice(eshop: Eshop) -> None:
    call_command("reencrypt_secrets", stdout=StringIO())
    call_command("reencrypt_secrets", stdout=StringIO())

    assert Eshop.objects.get(pk=eshop.pk).oauth_access_token == eshop.oauth_access_token


def test_reencrypt_command_stops_on_undecryptable_value(
    eshop: Eshop, settings: Any
) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(
        CommandError, match="no key in FIELD_ENCRYPTION_KEYS decrypts it"
    ):
        call_command("reencrypt_secrets", stdout=StringIO())


def test_invalid_key_is_named_by_position_not_value(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [
        Fernet.generate_key().decode(),
        "not-a-fernet-key",
    ]

    with pytest.raises(
        ImproperlyConfigured, match=r"FIELD_ENCRYPTION_KEYS\[1\]"
    ) as excinfo:
        encrypt("x")

    assert "not-a-fernet-key" not in str(excinfo.value)


def test_decrypt_rejects_garbage() -> None:
    with pytest.raises(DecryptionError):
        decrypt("gAAAAnot-really-a-token")


def test_secret_repr_never_shows_the_value(eshop: Eshop) -> None:
    token = Eshop.objects.get(pk=eshop.pk).oauth_access_token

    assert isinstance(token, Secret)
    assert token not in repr(token)
    assert token not in repr(Eshop.objects.get(pk=eshop.pk).__dict__)


def test_encrypted_field_refuses_lookups_that_cannot_match(eshop: Eshop) -> None:
    with pytest.raises(NotImplementedError, match="encrypted"):
        Eshop.objects.filter(oauth_access_token="x").exists()
    assert Eshop.objects.filter(oauth_access_token__isnull=False).count() == 1
