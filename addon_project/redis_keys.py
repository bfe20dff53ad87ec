"""Every Redis key the platform uses: one function per key family, each saying what the key holds.

All keys start with SHOPTET_REDIS_PREFIX (one Redis can serve several deployments, and each test
gets its own prefix). Keys of one e-shop carry the hash tag `{eshop:<id>}`, so a Lua script that
touches several of them stays in one Redis Cluster slot. No other module builds a key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings


def _prefix() -> str:
    return str(settings.SHOPTET_REDIS_PREFIX)


def _eshop(eshop_id: int) -> str:
    return f"{_prefix()}:{{eshop:{eshop_id}}}"


# --- API tokens (shoptet_api.tokens) ---------------------------------------------------------------


def token_key(eshop_id: int) -> str:
    """Hash: the current token (`c1` + `c2` encrypted; `ct` from an earlier release), `fp`
    fingerprint, `exp` epoch seconds, `life` seconds, `ofp` the installation's fingerprint)."""
    return f"{_eshop(eshop_id)}:token"


def issued_key(eshop_id: int) -> str:
    """Sorted set of minted tokens (fingerprints or pending reservations) scored by expiry."""
    return f"{_eshop(eshop_id)}:issued"


def renew_lock_key(eshop_id: int) -> str:
    """String: the owner id of the single-flight token renewal lock (SET NX PX)."""
    return f"{_eshop(eshop_id)}:renew-lock"


def health_key(eshop_id: int) -> str:
    """Hash: consecutive renewal failures and the last error (operators' token health); written
    only by failures, with a TTL, and deleted by the next renewal."""
    return f"{_eshop(eshop_id)}:health"


def token_failing_key() -> str:
    """Sorted set of e-shop ids whose latest renewals failed, scored by failures in a row: the
    dashboard's candidates (a recovered tenant is dropped when the dashboard reads it)."""
    return f"{_prefix()}:token-failing"


def token_activity_key() -> str:
    """Sorted set of e-shop ids scored by their last API use: proactive renewal covers only these."""
    return f"{_prefix()}:token-activity"


# --- Request limits (shoptet_api.limiter) ----------------------------------------------------------


def leases_key(eshop_id: int) -> str:
    """Sorted set of in-flight request leases scored by the time each expires."""
    return f"{_eshop(eshop_id)}:leases"


def bucket_key(eshop_id: int) -> str:
    """Hash: the last `X-RateLimit-Bucket-Filling` reading (`level`, `max`, `at` epoch seconds)."""
    return f"{_eshop(eshop_id)}:bucket"


# --- Provisioning, sync ----------------------------------------------------------------------------


def key_renewal_lock_key(eshop_id: int) -> str:
    """String: the owner id of the lock around renewing the webhook signature key."""
    return f"{_eshop(eshop_id)}:key-renewal"


def sync_lease_key(eshop_id: int, resource: str) -> str:
    """String: who holds the sync lease of one resource (orders, products) of an e-shop."""
    return f"{_eshop(eshop_id)}:sync-lease:{resource}"


def sync_job_finished_key(eshop_id: int, job_id: str) -> str:
    """String flag: the snapshot job `job_id` was fully applied (kept a day)."""
    return f"{_eshop(eshop_id)}:sync-job-finished:{job_id}"


# --- Platform-wide ---------------------------------------------------------------------------------


def throttle_key(scope: str, subject: str) -> str:
    """Counter: one subject's requests in the current window of a throttle scope (install, login)."""
    return f"{_prefix()}:throttle:{scope}:{subject}"


def activity_hour_key(hour: datetime) -> str:
    """Hash: one UTC hour's activity counts, event name → count (the console's charts)."""
    return f"{_prefix()}:activity:{hour.astimezone(UTC):%Y%m%d%H}"


def heartbeat_key() -> str:
    """String: epoch seconds of celery beat's last heartbeat task."""
    return f"{_prefix()}:beat-heartbeat"


def dashboard_counts_key() -> str:
    """String (JSON, expires after 30 s): the operator dashboard's counts and when they were made."""
    return f"{_prefix()}:dashboard-counts"
