"""Run the whole platform locally with a demo tenant: `make run` (Ctrl-C stops everything).

Starts the Shoptet emulator, the web server, a Celery worker and beat; migrates the SQLite default
database; creates a demo operator; installs a demo e-shop through the emulator exactly as Shoptet
would (install code → our callback → code exchange); then prints where to look.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WEB_PORT = int(os.environ.get("WEB_PORT", "8000"))
EMULATOR_PORT = int(os.environ.get("EMULATOR_PORT", "8765"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
OPERATOR = "operator"

WEB = f"http://127.0.0.1:{WEB_PORT}"
EMULATOR = f"http://127.0.0.1:{EMULATOR_PORT}"


def fail(message: str) -> None:
    print(f"\nrun: {message}", file=sys.stderr)
    raise SystemExit(1)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DEBUG": "true",
            "REDIS_URL": REDIS_URL,
            "SHOPTET_ALLOW_HTTP": "true",
            "SHOPTET_CLIENT_ID": "demo-client-id",
            "SHOPTET_CLIENT_SECRET": "demo-client-secret",
            "SHOPTET_OAUTH_URL": f"{EMULATOR}/action/ApiOAuthServer/",
            "SHOPTET_API_URL": EMULATOR,
            "SHOPTET_REDIRECT_URI": f"{WEB}/oauth/install/",
            "SHOPTET_WEBHOOK_URL": f"{WEB}/webhooks/shoptet/",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def check_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        fail(
            f"Redis is not reachable at {REDIS_URL}.\n"
            "  Install and start it, e.g. `sudo apt-get install redis-server` then `redis-server --daemonize yes`,\n"
            "  or point REDIS_URL at one."
        )


def check_port_free(port: int, what: str, variable: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            fail(
                f"port {port} is already in use; stop what runs there or set {variable} for the {what}."
            )


def manage(*args: str, extra_env: dict[str, str] | None = None) -> None:
    env = {**child_env(), **(extra_env or {})}
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True)


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(
    url: str, processes: dict[str, subprocess.Popen[bytes]], *, seconds: float = 30
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_children(processes)
        try:
            if http("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    fail(f"{url} did not come up within {seconds:.0f} s")


def check_children(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, process in processes.items():
        if process.poll() is not None:
            fail(
                f"the {name} exited unexpectedly (code {process.returncode}); see its output above."
            )


def stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def deliver(eshop_id: int, event: str, instance: str) -> int:
    """Ask the emulator to deliver one signed webhook; our receiver's HTTP status (0: none)."""
    status, body = http(
        "POST",
        f"{EMULATOR}/_emulator/webhook",
        # addon:* events are configured in the partner admin, not registered: name our URL.
        {
            "eshopId": eshop_id,
            "event": event,
            "eventInstance": instance,
            "url": f"{WEB}/webhooks/shoptet/",
        },
    )
    if status != 200:
        print(
            f"run: the emulator could not deliver {event}: HTTP {status} {body[:200]}",
            flush=True,
        )
        return 0
    return int(json.loads(body).get("status") or 0)


def demo_webhooks(eshop_id: int, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """Deliver webhooks the way Shoptet does once post-install setup has registered them."""
    # The worker renews the signature key and registers webhooks right after the install;
    # until then our receiver rightly refuses the delivery (401).
    deadline = time.monotonic() + 30
    while (
        deliver(eshop_id, "eshop:projectDomain", f"shop-{eshop_id}.myshoptet.com")
        != 200
    ):
        check_children(processes)
        if time.monotonic() > deadline:
            fail(
                "the demo webhook was not accepted within 30 s (is the worker running?)"
            )
        time.sleep(0.5)
    for event in ("addon:suspend", "addon:approve"):
        # eventCreated has one-second resolution: keep the two lifecycle events apart.
        time.sleep(1.1)
        if deliver(eshop_id, event, str(eshop_id)) != 200:
            fail(f"the demo {event} webhook was refused")
    print(
        f"run: webhooks delivered to e-shop {eshop_id}: eshop:projectDomain, addon:suspend, addon:approve",
        flush=True,
    )


def main() -> None:
    os.chdir(ROOT)
    check_redis()
    check_port_free(WEB_PORT, "web server", "WEB_PORT")
    check_port_free(EMULATOR_PORT, "emulator", "EMULATOR_PORT")

    print("run: migrating the database")
    manage("migrate", "--no-input", "-v", "0")
    password = secrets.token_urlsafe(12)
    # A fresh password each run, passed through the environment (never on a command line).
    manage("ensure_operator", OPERATOR, extra_env={"OPERATOR_PASSWORD": password})
    processes: dict[str, subprocess.Popen[bytes]] = {}
    beat_dir = tempfile.mkdtemp(prefix="shoptet-beat-")
    commands = {
        "emulator": [
            PYTHON,
            "manage.py",
            "shoptet_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(EMULATOR_PORT),
        ],
        "web server": [
            PYTHON,
            "manage.py",
            "runserver",
            f"127.0.0.1:{WEB_PORT}",
            "--noreload",
        ],
        "worker": [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "addon_project",
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
        ],
        "beat": [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "addon_project",
            "beat",
            "--loglevel=INFO",
            "--schedule",
            str(Path(beat_dir) / "celerybeat-schedule"),
        ],
    }
    try:
        for name, command in commands.items():
            # A new session: Ctrl-C reaches only this script, which then stops the children in order.
            processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=child_env(), start_new_session=True
            )
        wait_for(f"{EMULATOR}/_emulator/stats", processes)
        wait_for(f"{WEB}/healthz", processes)

        # Shoptet's side of an install: the emulator issues a code and calls our install URL.
        status, body = http("POST", f"{EMULATOR}/_emulator/install", {"callback": True})
        issued = json.loads(body) if status == 200 else {}
        if issued.get("callbackStatus") != 200:
            fail(
                f"the demo install failed: emulator HTTP {status}, our callback answered {issued.get('callbackStatus')}"
            )
        eshop_id = issued["eshopId"]
        demo_webhooks(eshop_id, processes)
        print(
            "\n"
            "================================================================\n"
            f"  Platform is up. Demo e-shop {eshop_id} installed through the emulator;\n"
            "  a signed eshop:projectDomain webhook and addon:suspend / addon:approve arrived.\n"
            f"  Admin:     {WEB}/admin/   (login: {OPERATOR} / {password})\n"
            f"  Tenants:   {WEB}/admin/eshops/eshop/  (open the e-shop: its lifecycle transitions)\n"
            f"  Webhooks:  {WEB}/admin/shoptet_api/webhookevent/\n"
            f"  Dashboard: {WEB}/admin/dashboard/\n"
            f"  Settings page as the Shoptet admin opens it (a fresh login code on every click):\n"
            f"             {EMULATOR}/_emulator/open-settings?eshopId={eshop_id}&lang=cs&url={WEB}/settings/\n"
            f"  Readiness: {WEB}/readyz\n"
            f"  Emulator:  {EMULATOR}/_emulator/stats\n"
            "  Ctrl-C stops everything.\n"
            "================================================================\n",
            flush=True,
        )
        while True:
            check_children(processes)
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nrun: stopping", flush=True)
    finally:
        stop_all(processes)


if __name__ == "__main__":
    main()
