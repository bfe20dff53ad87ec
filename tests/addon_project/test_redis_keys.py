"""Every Redis key is built in addon_project/redis_keys.py, one documented function per family."""

from __future__ import annotations

import datetime as dt
import inspect
from pathlib import Path
from typing import Any

from addon_project import redis_keys

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = (
    "addon_project",
    "eshops",
    "oauth",
    "shoptet_api",
    "sync",
    "shoptet_emulator",
)
# The setting is defined in settings.py and read only by the key module.
ALLOWED = {
    ROOT / "addon_project" / "settings.py",
    ROOT / "addon_project" / "redis_keys.py",
}


def builders() -> dict[str, Any]:
    return {
        name: function
        for name, function in inspect.getmembers(redis_keys, inspect.isfunction)
        if function.__module__ == redis_keys.__name__ and not name.startswith("_")
    }


def sample_arguments(function: Any) -> list[Any]:
    samples = {
        "eshop_id": 42,
        "resource": "orders",
        "job_id": "job-1",
        "scope": "install",
        "subject": "192.0.2.1",
        "hour": dt.datetime(2030, 1, 2, 3, tzinfo=dt.UTC),
    }
    return [samples[name] for name in inspect.signature(function).parameters]


def test_no_production_module_outside_redis_keys_reads_the_key_prefix() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in PRODUCTION_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in ALLOWED and "SHOPTET_REDIS_PREFIX" in path.read_text()
    ]

    assert offenders == []


def test_every_key_builder_says_what_its_key_holds() -> None:
    undocumented = [
        name
        for name, function in builders().items()
        if not (function.__doc__ or "").strip()
    ]

    assert len(builders()) >= 13
    assert undocumented == []


def test_every_key_starts_with_the_prefix_and_keys_are_distinct(settings: Any) -> None:
    settings.SHOPTET_REDIS_PREFIX = "pfx"
    keys = [function(*sample_arguments(function)) for function in builders().values()]

    assert all(key.startswith("pfx:") for key in keys)
    assert len(set(keys)) == len(keys)


def test_keys_of_one_eshop_carry_its_hash_tag(settings: Any) -> None:
    settings.SHOPTET_REDIS_PREFIX = "pfx"
    per_eshop = {
        name: function(*sample_arguments(function))
        for name, function in builders().items()
        if "eshop_id" in inspect.signature(function).parameters
    }

    assert set(per_eshop) >= {
        "token_key",
        "issued_key",
        "renew_lock_key",
        "health_key",
        "leases_key",
        "bucket_key",
        "key_renewal_lock_key",
        "sync_lease_key",
        "sync_job_finished_key",
    }
    assert {
        name: key.split(":")[1] for name, key in per_eshop.items()
    } == dict.fromkeys(per_eshop, "{eshop")
    assert all("{eshop:42}" in key for key in per_eshop.values())


def test_the_hourly_activity_key_names_the_utc_hour(settings: Any) -> None:
    settings.SHOPTET_REDIS_PREFIX = "pfx"
    prague = dt.timezone(dt.timedelta(hours=1))

    key = redis_keys.activity_hour_key(dt.datetime(2030, 1, 2, 4, 30, tzinfo=prague))

    assert key == "pfx:activity:2030010203"
