"""Run the whole platform locally with a demo tenant: `make run` (Ctrl-C stops everything).

Starts the Shoptet emulator, the web server, a Celery worker and beat; migrates the SQLite default
database; creates a demo operator; installs a demo e-shop through the emulator exactly as Shoptet
would (install code → our callback → code exchange); then prints where to look.

Ctrl-C, `kill -TERM` and a closed terminal (SIGHUP) all stop every child; on Linux the children
also die when this runner is killed outright. One instance per database: a second `make run` on
the same database is refused, naming the running one (a lock file next to the database, held with
flock for the runner's lifetime, so the kernel releases it however the runner ends).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit

import environ

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WEB_PORT = int(os.environ.get("WEB_PORT", "8000"))
EMULATOR_PORT = int(os.environ.get("EMULATOR_PORT", "8765"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Passed to every child explicitly, like REDIS_URL: the database this runner locks is the one they use.
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{ROOT / 'db.sqlite3'}"
OPERATOR = "operator"

WEB = f"http://127.0.0.1:{WEB_PORT}"
EMULATOR = f"http://127.0.0.1:{EMULATOR_PORT}"


def fail(message: str) -> NoReturn:
    print(f"\nrun: {message}", file=sys.stderr)
    raise SystemExit(1)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DEBUG": "true",
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": DATABASE_URL,
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
        url = REDIS_URL
        if password := urlsplit(url).password:
            url = url.replace(f":{password}@", ":***@")
        fail(
            f"Redis is not reachable at {url}.\n"
            "  Install and start it, e.g. `sudo apt-get install redis-server` then `redis-server --daemonize yes`,\n"
            "  or point REDIS_URL at one."
        )


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop everything, exactly as Ctrl-C does."""


def on_stop_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def say(message: str) -> None:
    """Print, even when the terminal is gone (SIGHUP): stopping must not fail on the way."""
    with contextlib.suppress(OSError):
        print(message, flush=True)


# ---- One instance per database -----------------------------------------------------------------


def lock_path() -> Path:
    """Where the instance lock lives: next to the SQLite file, else in the clone."""
    config = environ.Env.db_url_config(DATABASE_URL)
    name = str(config.get("NAME") or "")
    if config["ENGINE"] == "django.db.backends.sqlite3" and name not in (
        "",
        ":memory:",
    ):
        database = (ROOT / name).resolve()
        return database.with_name(f"{database.name}.run.lock")
    return ROOT / ".run-platform.lock"


def hold_instance_lock() -> int:
    """Take the instance lock for this process's lifetime (the returned fd stays open), or refuse.

    flock is released by the kernel when the process ends, however it ends: no stale locks. The
    file says who holds it, for the message a second instance prints.
    """
    path = lock_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        fail(f"cannot open the instance lock {path}: {exc.strerror}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        fail(refusal(holder, path))
    os.ftruncate(fd, 0)
    os.write(
        fd,
        json.dumps(
            {"pid": os.getpid(), "web_port": WEB_PORT, "emulator_port": EMULATOR_PORT}
        ).encode(),
    )
    return fd


def refusal(holder: str, path: Path) -> str:
    try:
        running = json.loads(holder)
        who = (
            f"PID {int(running['pid'])}, web server {int(running['web_port'])}, "
            f"emulator {int(running['emulator_port'])}"
        )
        stop = f"press Ctrl-C in its terminal or `kill {int(running['pid'])}`"
    except (ValueError, KeyError, TypeError):
        who, stop = "just starting", "stop it"
    return (
        f"another `make run` is already running on this database ({who}).\n"
        "  A second one would share its database, Celery queue and Redis keys (and reset its operator\n"
        f"  password). Use that one, or {stop} first. (Lock: {path})"
    )


# ---- Who holds a port ------------------------------------------------------------------------------


def our_role(args: list[str]) -> str | None:
    """Which part of `make run` a command line is, or None when it is not one of ours."""
    if "manage.py" in {Path(arg).name for arg in args}:
        if "runserver" in args:
            return "web server"
        if "shoptet_emulator" in args:
            return "emulator"
    if any(Path(arg).name == "celery" for arg in args) and "addon_project" in args:
        if "worker" in args:
            return "worker"
        if "beat" in args:
            return "beat"
    return None


def read_args(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def ours(pid: int) -> str | None:
    """The role of a process of this clone's `make run`, or None (not ours, or cannot tell)."""
    try:
        if Path(f"/proc/{pid}/cwd").readlink() != ROOT:
            return None
        return our_role(read_args(pid))
    except OSError:
        return None


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return int(stat.rsplit(")", 1)[1].split()[1])


def port_holders(port: int) -> list[int] | None:
    """PIDs with a socket listening on `port` (Linux /proc); None when that cannot be told."""
    inodes: set[str] = set()
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not any(table.exists() for table in tables):
        return None
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 is the socket inode.
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(str(fd.readlink()) in inodes for fd in (entry / "fd").iterdir()):
                holders.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's process
            continue
    return sorted(holders) or None


def leftovers() -> list[tuple[int, str]]:
    """Processes of an earlier `make run` from this clone whose runner is gone: (pid, role)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            # Only the children the runner started (each leads its own process group); a
            # worker's pool processes go with their group.
            if os.getpgid(pid) != pid or is_runner(parent_of(pid)):
                continue
        except (OSError, ValueError, IndexError):
            continue
        role = ours(pid)
        if role:
            found.append((pid, role))
    return sorted(found)


def is_runner(pid: int) -> bool:
    try:
        return any(Path(arg).name == "run_platform.py" for arg in read_args(pid))
    except OSError:
        return False


def port_in_use(port: int, what: str, variable: str) -> str:
    """Why `port` cannot be used, naming the process that holds it when it can be told."""
    advice = f"stop it or set {variable} for the {what}"
    holders = port_holders(port)
    if holders is None:
        return f"port {port} is already in use (could not tell by which process); {advice}."
    pid = holders[0]
    role = ours(pid)
    if role is None:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            name = "?"
        # Only the program name: another program's command line may carry its secrets.
        return f"port {port} is in use by PID {pid} ({name}), not by this platform; {advice}."
    command = " ".join(read_args(pid))
    try:
        runner = parent_of(pid)
    except (OSError, ValueError, IndexError):
        runner = 0
    if runner and is_runner(runner):
        return (
            f"port {port} is used by the {role} of another `make run` from this clone "
            f"(runner PID {runner}, {role} PID {pid}); stop that one or set {variable}."
        )
    return (
        f"port {port} is held by PID {pid} ({command}),\n"
        f"  the {role} left over from an earlier `make run` in this clone (its runner is gone); {advice}."
    )


def check_ports_free() -> None:
    problems = []
    for port, what, variable in (
        (WEB_PORT, "web server", "WEB_PORT"),
        (EMULATOR_PORT, "emulator", "EMULATOR_PORT"),
    ):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                problems.append(port_in_use(port, what, variable))
    if not problems:
        return
    left = leftovers()
    if left:
        listed = ", ".join(f"{pid} ({role})" for pid, role in left)
        pids = " ".join(str(pid) for pid, _ in left)
        problems.append(
            f"Leftovers of an earlier `make run` in this clone: PID {listed}.\n"
            f"  Stop them all with: kill {pids}"
        )
    fail("\nrun: ".join(problems))


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


def die_with_runner() -> Callable[[], None] | None:
    """A preexec_fn that makes a child get SIGTERM when this runner dies, even by SIGKILL (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(
        None, use_errno=True
    )  # loaded here: the forked child should do little
    runner = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != runner:  # the runner died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """Signal a child's whole process group (a worker's pool processes too); gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        # A hung child, or what it left behind in its group, goes now.
        signal_group(process.pid, signal.SIGKILL)
        process.wait()


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
    # From here on, a kill or a closed terminal stops everything the way Ctrl-C does.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_stop_signal)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    beat_dir = tempfile.mkdtemp(prefix="shoptet-beat-")
    try:
        run(processes, beat_dir)
    except KeyboardInterrupt:
        say("\nrun: stopping (Ctrl-C)")
    except Stopped as stop:
        say(f"\nrun: stopping ({stop})")
    finally:
        # Nothing interrupts the stop itself; it is bounded (SIGKILL after 10 s).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stop_all(processes)
        shutil.rmtree(beat_dir, ignore_errors=True)


def run(processes: dict[str, subprocess.Popen[bytes]], beat_dir: str) -> None:
    hold_instance_lock()
    check_redis()
    # /metrics for the demo: a fresh token per run, and one metrics directory for the web server, the
    # worker and beat, so the counters of all of them add up (as in production).
    os.environ.setdefault("METRICS_TOKEN", secrets.token_urlsafe(24))
    metrics_dir = Path(beat_dir) / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    check_ports_free()

    print("run: migrating the database")
    manage("migrate", "--no-input", "-v", "0")
    password = secrets.token_urlsafe(12)
    # A fresh password each run, passed through the environment (never on a command line).
    manage("ensure_operator", OPERATOR, extra_env={"OPERATOR_PASSWORD": password})
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
    for name, command in commands.items():
        # A new session: Ctrl-C reaches only this script, which then stops the children in order.
        processes[name] = subprocess.Popen(
            command,
            cwd=ROOT,
            env=child_env(),
            start_new_session=True,
            preexec_fn=die_with_runner(),  # safe: this script starts no threads
        )
    print(
        "run: started "
        + ", ".join(
            f"{name} (PID {process.pid})" for name, process in processes.items()
        ),
        flush=True,
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
        f"  Metrics:   curl -H 'Authorization: Bearer {os.environ['METRICS_TOKEN']}' {WEB}/metrics\n"
        f"  Emulator:  {EMULATOR}/_emulator/stats\n"
        "  Ctrl-C (or kill -TERM, or closing this terminal) stops everything.\n"
        "================================================================\n",
        flush=True,
    )
    while True:
        check_children(processes)
        time.sleep(1)


if __name__ == "__main__":
    main()
