"""pytest fixtures for the Shoptet emulator (a plugin module).

Load it from the project's conftest with
``pytest_plugins = ["shoptet_emulator.testing"]`` or ``-p shoptet_emulator.testing``.

* ``shoptet_emulator_server``: one emulator for the whole session on a free loopback port.
* ``shoptet_emulator``: the same instance, ``reset()`` before each test.

The session emulator checks every API answer against the official OpenAPI schema,
so a test that drives the emulator into an off-spec answer fails loudly (500
``emulator-schema-violation``) instead of passing on a fake shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shoptet_emulator import ShoptetEmulator

EMULATOR_CLIENT_ID = "emulator-client-id"
EMULATOR_CLIENT_SECRET = "emulator-client-secret"  # noqa: S105 - a fake for tests
EMULATOR_REDIRECT_URI = "http://testserver/oauth/install/"


@pytest.fixture(scope="session")
def shoptet_emulator_server() -> Iterator[ShoptetEmulator]:
    """A Shoptet emulator on 127.0.0.1, started once per test session."""
    emulator = ShoptetEmulator(
        host="127.0.0.1",
        port=0,
        client_id=EMULATOR_CLIENT_ID,
        client_secret=EMULATOR_CLIENT_SECRET,
        redirect_uri=EMULATOR_REDIRECT_URI,
        validate_responses=True,
    )
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def shoptet_emulator(shoptet_emulator_server: ShoptetEmulator) -> ShoptetEmulator:
    """The session emulator with every shop, token, knob and counter forgotten."""
    shoptet_emulator_server.reset()
    return shoptet_emulator_server
