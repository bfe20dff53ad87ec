"""One writer of tenant state: the `Eshop` state machine is the only code that changes a tenant's
status, and every verdict Shoptet gives about an installation is applied through it, guarded by the
OAuth token it was about. Races with a reinstall are played with real row locks on PostgreSQL.
"""

from __future__ import annotations

import ast
import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.models.signals import pre_delete
from django.utils import timezone
from pytest_django import DjangoCaptureOnCommitCallbacks

from addon_project import redis_keys
from addon_project.redis_client import get_redis
from eshops.models import Eshop
from oauth.services import install_addon
from shoptet_api import tasks, tokens, webhooks
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import AddonNotInstalled, AddonSuspended
from shoptet_api.models import WebhookEvent
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

ACTIVE, SUSPENDED = Eshop.Status.ACTIVE, Eshop.Status.SUSPENDED
UNINSTALLED = Eshop.Status.UNINSTALLED
ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = ("addon_project", "eshops", "oauth", "shoptet_api")

requires_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="row locks between connections need PostgreSQL (DATABASE_URL=postgres://…)",
)


def not_installed() -> AddonNotInstalled:
    """getAccessToken's explicit answer for a removed addon."""
    return AddonNotInstalled(
        "Addon is not installed.",
        error_code="addon_not_installed",
        status_code=400,
        endpoint="GET oauth/getAccessToken",
    )


def suspended() -> AddonSuspended:
    """The API's answer for an installation that is not approved."""
    return AddonSuspended(
        "Addon installation is not approved.",
        error_code="invalid-token",
        status_code=401,
        endpoint="GET /api/orders",
    )


def inbox_row(eshop: Eshop, event: str, *, verified_by: str) -> WebhookEvent:
    created = timezone.now()
    return WebhookEvent.objects.create(
        eshop=eshop,
        event=event,
        event_instance=str(eshop.eshop_id),
        event_created=created,
        dedup_key=WebhookEvent.make_dedup_key(
            eshop_id=eshop.eshop_id,
            event=event,
            event_instance=str(eshop.eshop_id),
            event_created=created.isoformat(),
        ),
        raw_body="{}",
        verified_by=verified_by,
    )


class Racer(threading.Thread):
    """Run `work` on a connection of its own; `blocked_or_done()` waits until it holds or waits."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.pid: int | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.pid = cursor.fetchone()[0]
            self.ready.set()
            self.work()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
            connections.close_all()

    def blocked_or_done(self) -> None:
        """Return once the thread finished or waits for a row lock (asked of PostgreSQL itself)."""
        self.ready.wait()
        with connections["default"].cursor() as cursor:
            while self.is_alive():
                cursor.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                    [self.pid],
                )
                row = cursor.fetchone()
                if row is not None and row[0] == "Lock":
                    return
                time.sleep(0.01)

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


# --- One writer ------------------------------------------------------------------------------------

STATE_FIELDS = {
    "status",
    "status_reason",
    "status_changed_at",
    "uninstalled_at",
    "lifecycle_event_at",
    "processing_paused_at",
    "processing_paused_by",
}
# Objects of other models that have a `status` of their own (the webhook inbox).
OTHER_STATUS_HOLDERS = {"event", "row", "webhook_event"}
WRITE_METHODS = {"update", "create", "get_or_create", "update_or_create", "bulk_update"}


def _root_name(node: ast.expr) -> str:
    """`Eshop` for `Eshop.objects.filter(…).update`, `event` for `event.status`."""
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def tenant_state_writes(source: str) -> list[str]:
    """Lines of `source` that write a tenant's status fields (assignments or queryset writes)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                targets.extend(
                    target.elts if isinstance(target, ast.Tuple) else [target]
                )
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets.append(node.target)
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr in STATE_FIELDS
                and not (
                    target.attr == "status"
                    and _root_name(target.value) in OTHER_STATUS_HOLDERS
                )
            ):
                found.append(f"line {line}: .{target.attr} =")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in WRITE_METHODS
            and _root_name(node.func) in {"Eshop", "eshops", "queryset", "rows"}
        ):
            for keyword in node.keywords:
                if keyword.arg in STATE_FIELDS:
                    found.append(
                        f"line {node.lineno}: {node.func.attr}({keyword.arg}=)"
                    )
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in STATE_FIELDS
        ):
            found.append(f"line {line}: setattr(…, {node.args[1].value!r})")
    return found


def test_the_scan_finds_each_kind_of_status_write() -> None:
    source = (
        "eshop.status = 'x'\n"
        "locked.status, locked.status_reason = 'x', 'y'\n"
        "Eshop.objects.filter(pk=1).update(processing_paused_at=None)\n"
        "setattr(eshop, 'uninstalled_at', None)\n"
        "event.status = 'processed'\n"  # the inbox row's own status
        "WebhookEvent.objects.filter(pk=1).update(status='received')\n"
    )

    assert tenant_state_writes(source) == [
        "line 1: .status =",
        "line 2: .status =",
        "line 2: .status_reason =",
        "line 3: update(processing_paused_at=)",
        "line 4: setattr(…, 'uninstalled_at')",
    ]


def test_only_the_tenant_model_writes_a_tenant_status() -> None:
    writers = {}
    for package in PRODUCTION_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/" in relative or relative == "eshops/models.py":
                continue
            found = tenant_state_writes(path.read_text())
            if found:
                writers[relative] = found

    assert writers == {}


def test_the_tenant_model_knows_nothing_of_tokens() -> None:
    tree = ast.parse((ROOT / "eshops/models.py").read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }

    assert not {name for name in imported if name.startswith("shoptet_api")}


def test_an_uninstall_forgets_every_api_token_after_commit(
    install: Callable[..., Eshop],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)
    assert tokens.token_health(eshop.eshop_id)["valid_tokens"] == 1

    with django_capture_on_commit_callbacks(execute=True):
        eshop.transition(UNINSTALLED, reason="test", source="webhook")

    assert tokens.token_health(eshop.eshop_id)["valid_tokens"] == 0
    assert not get_redis().exists(
        tokens.token_key(eshop.eshop_id), tokens.issued_key(eshop.eshop_id)
    )


# --- One rule for "may this tenant call the API" -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "paused", "refusal"),
    [
        (ACTIVE, False, None),
        (ACTIVE, True, "paused"),
        (SUSPENDED, False, "suspended"),
        (SUSPENDED, True, "paused"),
        (UNINSTALLED, False, "uninstalled"),
        (Eshop.Status.TERMINATED, False, "terminated"),
    ],
)
def test_one_rule_says_whether_a_tenant_may_call_the_api(
    eshop_factory: Callable[..., Eshop], status: str, paused: bool, refusal: str | None
) -> None:
    eshop = eshop_factory(
        status=status, processing_paused_at=timezone.now() if paused else None
    )

    assert eshop.api_refusal == refusal
    assert eshop.can_call_api is (refusal is None)


# --- Verdicts are about one OAuth token ----------------------------------------------------------


def test_a_webhook_verdict_about_the_replaced_token_cannot_uninstall_a_reinstalled_shop(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator
) -> None:
    eshop = install()
    handled = Eshop.objects.get(
        pk=eshop.pk
    )  # what a webhook handler loaded before the reinstall
    reinstalled = install_addon(
        code=shoptet_settings.issue_install_code(eshop.eshop_id)
    )

    webhooks._apply_verdict(handled, not_installed())

    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.status == ACTIVE
    assert stored.oauth_access_token == reinstalled.oauth_access_token
    assert not stored.transitions.filter(to_status=UNINSTALLED).exists()


def test_an_api_verdict_about_the_replaced_token_cannot_suspend_a_reinstalled_shop(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator
) -> None:
    eshop = install()
    handled = Eshop.objects.get(pk=eshop.pk)
    install_addon(code=shoptet_settings.issue_install_code(eshop.eshop_id))

    ShoptetClient(handled)._record(suspended(), "GET /api/orders")

    assert Eshop.objects.get(pk=eshop.pk).status == ACTIVE


def test_a_verdict_about_the_current_token_is_applied(
    install: Callable[..., Eshop],
) -> None:
    eshop = install()

    webhooks._apply_verdict(eshop, not_installed())

    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.status == UNINSTALLED
    assert stored.oauth_access_token is None
    assert stored.transitions.get(to_status=UNINSTALLED).source == "shoptet"


@requires_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_verdict_waiting_for_a_committing_reinstall_does_not_uninstall_it(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator
) -> None:
    eshop = install()
    handled = Eshop.objects.get(pk=eshop.pk)  # the handler's view, before the reinstall
    code = shoptet_settings.issue_install_code(eshop.eshop_id)
    verdict = Racer(lambda: webhooks._apply_verdict(handled, not_installed()))

    with transaction.atomic():
        install_addon(code=code)  # holds the tenant's row lock until this block commits
        verdict.start()
        verdict.blocked_or_done()
    verdict.finish()

    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.status == ACTIVE
    assert stored.oauth_access_token == shoptet_settings.oauth_token_for(eshop.eshop_id)


# --- A 401 is ambiguous; only addon_not_installed says "gone" -------------------------------------


@pytest.mark.parametrize(
    ("shoptet_says", "expected"),
    [("401 to every token", ACTIVE), ("addon_not_installed", UNINSTALLED)],
)
def test_an_unsigned_uninstall_needs_an_explicit_addon_not_installed(
    install: Callable[..., Eshop],
    shoptet_settings: ShoptetEmulator,
    shoptet_says: str,
    expected: str,
) -> None:
    # A wrong SHOPTET_OAUTH_URL or client makes getAccessToken answer 401 for every shop: that
    # must not confirm an unsigned uninstall (the source network is shared by every addon).
    eshop = install()
    if shoptet_says == "addon_not_installed":
        shoptet_settings.set_addon_state(eshop.eshop_id, "not_installed")
    else:
        shoptet_settings.revoke_oauth_token(eshop.eshop_id)
    row = inbox_row(eshop, "addon:uninstall", verified_by="network")

    webhooks.process_event(row.pk)

    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.status == expected
    assert (stored.oauth_access_token is not None) is (expected == ACTIVE)


# --- Post-install setup ---------------------------------------------------------------------------


def test_setup_is_not_done_without_a_signature_key_when_another_setup_holds_the_renewal(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator
) -> None:
    eshop = install()
    # Another setup took the renewal lock; it will fail (its process dies, Shoptet errs).
    lock = redis_keys.key_renewal_lock_key(eshop.eshop_id)
    get_redis().set(lock, "another-setup", px=60_000)

    tasks.post_install(eshop.eshop_id)

    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.webhook_signature_key is None
    assert not stored.setup_done
    later = timezone.now() + dt.timedelta(minutes=5)
    assert Eshop.objects.pending_setup(before=later).filter(pk=eshop.pk).exists()

    # The holder failed and its lock is gone: the sweep's next run completes the setup.
    get_redis().delete(lock)
    tasks.post_install(eshop.eshop_id)

    completed = Eshop.objects.get(pk=eshop.pk)
    assert completed.setup_done
    assert completed.webhook_signature_key == shoptet_settings.signature_key_for(
        eshop.eshop_id
    )


# --- The retention purge ----------------------------------------------------------------------------


@pytest.fixture
def long_uninstalled(
    install: Callable[..., Eshop],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> Eshop:
    eshop = install()
    with django_capture_on_commit_callbacks(execute=True):
        eshop.transition(UNINSTALLED, reason="test", source="webhook")
    Eshop.objects.filter(pk=eshop.pk).update(  # test setup: uninstalled long ago
        uninstalled_at=timezone.now() - dt.timedelta(days=400)
    )
    return eshop


@requires_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_reinstall_committing_between_collect_and_delete_survives_the_purge(
    long_uninstalled: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    eshop_id = long_uninstalled.eshop_id
    reinstall = Racer(
        lambda: install_addon(code=shoptet_settings.issue_install_code(eshop_id))
    )

    def reinstall_meanwhile(sender: Any, instance: Any, **kwargs: Any) -> None:
        if isinstance(instance, Eshop) and not reinstall.is_alive():
            reinstall.start()
            reinstall.blocked_or_done()

    pre_delete.connect(reinstall_meanwhile, sender=Eshop, weak=False)
    try:
        tasks.purge_uninstalled()
    finally:
        pre_delete.disconnect(reinstall_meanwhile, sender=Eshop)
    reinstall.finish()

    stored = Eshop.objects.get(eshop_id=eshop_id)
    assert stored.status == ACTIVE
    assert stored.oauth_access_token == shoptet_settings.oauth_token_for(eshop_id)
