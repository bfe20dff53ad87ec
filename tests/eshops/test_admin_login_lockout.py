"""Admin sign-in is protected against guessing (django-axes): lockout per username and per address."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def operator() -> User:
    return User.objects.create_user(
        "operator", password=PASSWORD, is_staff=True, is_superuser=True
    )


def sign_in(
    client: Client,
    username: str,
    password: str,
    *,
    ip: str = "192.0.2.10",
    **extra: Any,
) -> Any:
    return client.post(
        LOGIN,
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=ip,
        **extra,
    )


def fail_times(
    client: Client, username: str, times: int, *, ip: str = "192.0.2.10"
) -> None:
    for _ in range(times):
        assert sign_in(client, username, "wrong password", ip=ip).status_code == 200


def test_a_correct_password_signs_in(client: Client, operator: User) -> None:
    response = sign_in(client, "operator", PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_after_the_failure_limit_even_the_right_password_is_refused(
    client: Client, operator: User, settings: Any
) -> None:
    fail_times(client, "operator", settings.AXES_FAILURE_LIMIT - 1)
    assert sign_in(client, "operator", "wrong password").status_code == 429

    locked = sign_in(client, "operator", PASSWORD)

    assert locked.status_code == 429
    assert b"Sign-in temporarily locked" in locked.content
    assert "_auth_user_id" not in client.session


def test_the_username_is_locked_from_every_address(
    client: Client, operator: User, settings: Any
) -> None:
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, "operator", "wrong password", ip=f"198.51.100.{attempt + 1}")

    assert sign_in(client, "operator", PASSWORD, ip="203.0.113.99").status_code == 429


def test_one_address_guessing_many_usernames_is_locked(
    client: Client, operator: User, settings: Any
) -> None:
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, f"guess-{attempt}", "wrong password", ip="192.0.2.66")

    assert sign_in(client, "operator", PASSWORD, ip="192.0.2.66").status_code == 429
    # Another address is not affected by that address's guessing.
    assert sign_in(client, "operator", PASSWORD, ip="192.0.2.67").status_code == 302


def test_an_unknown_username_gets_the_same_answers_as_a_known_one(
    client: Client, operator: User, settings: Any
) -> None:
    known, unknown = Client(), Client()
    known_answers = [
        sign_in(known, "operator", "wrong", ip="192.0.2.1").status_code
        for _ in range(settings.AXES_FAILURE_LIMIT + 1)
    ]
    unknown_answers = [
        sign_in(unknown, "nobody-here", "wrong", ip="192.0.2.2").status_code
        for _ in range(settings.AXES_FAILURE_LIMIT + 1)
    ]

    assert known_answers == unknown_answers
    assert known_answers[-1] == 429


def test_a_forged_forwarded_for_header_does_not_escape_the_address_lock(
    client: Client, operator: User, settings: Any
) -> None:
    settings.NUM_PROXIES = 0
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        sign_in(
            client,
            f"guess-{attempt}",
            "wrong",
            ip="192.0.2.80",
            HTTP_X_FORWARDED_FOR=f"10.0.0.{attempt}",
        )

    assert (
        sign_in(
            client,
            "operator",
            PASSWORD,
            ip="192.0.2.80",
            HTTP_X_FORWARDED_FOR="10.9.9.9",
        ).status_code
        == 429
    )


def test_an_operator_can_unlock_a_username(
    client: Client, operator: User, settings: Any
) -> None:
    fail_times(client, "operator", settings.AXES_FAILURE_LIMIT - 1, ip="192.0.2.90")
    sign_in(client, "operator", "wrong", ip="192.0.2.90")
    assert sign_in(client, "operator", PASSWORD, ip="192.0.2.91").status_code == 429

    call_command("axes_reset_username", "operator")
    # The address lock of 192.0.2.90 is separate; a different address signs in now.
    assert sign_in(client, "operator", PASSWORD, ip="192.0.2.91").status_code == 302
