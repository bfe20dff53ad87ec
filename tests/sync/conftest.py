from __future__ import annotations

from collections.abc import Callable

import pytest

from eshops.models import Eshop


@pytest.fixture
def shop(install: Callable[..., Eshop]) -> Eshop:
    """An installed, active tenant the emulator knows (no orders yet)."""
    return install()
