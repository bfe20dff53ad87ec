"""Production smoke run (`make smoke`, CI): the platform from `requirements.txt` alone, in production mode.

Builds a fresh virtualenv with only the runtime requirements, then with DEBUG unset (real SECRET_KEY and
FIELD_ENCRYPTION_KEYS, HTTPS redirect off because everything talks over loopback) it runs collectstatic,
migrate and `check --deploy`, starts gunicorn (gunicorn.conf.py), a Celery worker, Celery beat and the
Shoptet emulator, and checks what a deploy must do: an install through the emulator, a signed webhook
processed by the worker, an admin page with its CSS served by the app itself, /readyz, /metrics. Then it
stops everything and removes what it made (database, Redis keys, virtualenv).

Only the standard library here: this script runs before any virtualenv exists.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPERATOR = "smoke-operator"


class SmokeFailure(Exception):
    pass


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(
    command: list[str], *, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise SmokeFailure(
            f"{' '.join(command[:4])} … exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout + result.stderr


class Http:
    """Tiny HTTP client with a cookie dict: `Secure` cookies must still flow over loopback http."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, response.headers, data


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    seconds: float,
    processes: dict[str, subprocess.Popen[bytes]],
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise SmokeFailure(
                    f"the {name} exited (code {process.returncode}) while waiting for {what}"
                )
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SmokeFailure(f"{what}: not within {seconds:.0f} s")


@contextmanager
def database(base_url: str | None, workdir: Path, python: Path) -> Iterator[str]:
    """A database of this run's own: a new PostgreSQL database when DATABASE_URL names a server."""
    if not base_url or not base_url.startswith(("postgres://", "postgresql://")):
        yield f"sqlite:///{workdir / 'smoke.sqlite3'}"
        return
    parts = urllib.parse.urlsplit(base_url)
    name = f"smoke_{os.getpid()}_{secrets.token_hex(3)}"
    admin_url = parts._replace(path="/postgres").geturl()
    statement = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c: c.execute(sys.argv[2])\n"
    )
    run([str(python), "-c", statement, admin_url, f'CREATE DATABASE "{name}"'])
    try:
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        run(
            [
                str(python),
                "-c",
                statement,
                admin_url,
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            ]
        )


def build_venv(workdir: Path) -> Path:
    venv = workdir / "venv"
    say("building a fresh virtualenv from requirements.txt only")
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-r",
            str(ROOT / "requirements.txt"),
        ]
    )
    for dev_only in (
        "pytest",
        "jsonschema",
        "yaml",
        "playwright",
        "mypy_django_plugin",
    ):
        probe = subprocess.run(
            [str(python), "-c", f"import {dev_only}"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            raise SmokeFailure(
                f"{dev_only} is importable in the runtime virtualenv: requirements.txt pulls in a dev package"
            )
    return python


def environment(
    *, web_port: int, emulator_port: int, database_url: str, workdir: Path
) -> dict[str, str]:
    base = f"http://127.0.0.1:{web_port}"
    emulator = f"http://127.0.0.1:{emulator_port}"
    keep = {
        name: os.environ[name]
        for name in ("PATH", "HOME", "LANG", "TMPDIR")
        if name in os.environ
    }
    return {
        **keep,
        "DJANGO_SETTINGS_MODULE": "addon_project.settings",
        # Production mode: DEBUG unset, real secrets.
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": base64.urlsafe_b64encode(
            secrets.token_bytes(32)
        ).decode(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Loopback http: no redirect to https (a TLS proxy does that in a real deploy).
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": database_url,
        # A Redis database and key prefix of this run's own; the Celery queue lives in that database.
        "REDIS_URL": os.environ.get("SMOKE_REDIS_URL", "redis://127.0.0.1:6379/13"),
        "SHOPTET_REDIS_PREFIX": f"smoke-{os.getpid()}",
        "SHOPTET_ALLOW_HTTP": "true",
        "SHOPTET_CLIENT_ID": "smoke-client-id",
        "SHOPTET_CLIENT_SECRET": secrets.token_urlsafe(24),
        "SHOPTET_OAUTH_URL": f"{emulator}/action/ApiOAuthServer/",
        "SHOPTET_API_URL": emulator,
        "SHOPTET_REDIRECT_URI": f"{base}/oauth/install/",
        "SHOPTET_WEBHOOK_URL": f"{base}/webhooks/shoptet/",
        "METRICS_TOKEN": secrets.token_urlsafe(24),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": "2",
        "PYTHONUNBUFFERED": "1",
    }


def start(
    name: str, command: list[str], env: dict[str, str], logs: Path
) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("wb")
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(processes: dict[str, subprocess.Popen[bytes]]) -> dict[str, int]:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    codes: dict[str, int] = {}
    deadline = time.monotonic() + 20
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            codes[name] = process.wait()
    return codes


def manage_shell(python: Path, env: dict[str, str], code: str) -> str:
    return run(
        [str(python), "manage.py", "shell", "-c", code], env=env, timeout=60
    ).strip()


def checks(
    *,
    python: Path,
    env: dict[str, str],
    web: Http,
    emulator: Http,
    processes: dict[str, subprocess.Popen[bytes]],
) -> None:
    status, _, body = web.request("GET", "/readyz")
    if status != 200:
        raise SmokeFailure(f"/readyz answered {status}: {body[:300]!r}")
    say("/readyz 200")

    # Shoptet's side of an install: the emulator issues a code and calls our install URL.
    status, _, body = emulator.request(
        "POST",
        "/_emulator/install",
        body=b'{"callback": true}',
        headers={"Content-Type": "application/json"},
    )
    issued = json.loads(body) if status == 200 else {}
    if issued.get("callbackStatus") != 200:
        raise SmokeFailure(
            f"install through the emulator: HTTP {status}, our callback answered {issued.get('callbackStatus')}"
        )
    eshop_id = int(issued["eshopId"])
    say(f"install of e-shop {eshop_id} answered 200")

    # Post-install runs on the worker (signature key, webhook registration); until then a delivery is 401.
    def delivered() -> bool:
        request = {
            "eshopId": eshop_id,
            "event": "eshop:projectDomain",
            "eventInstance": f"smoke-{eshop_id}.example",
        }
        code, _, answer = emulator.request(
            "POST",
            "/_emulator/webhook",
            body=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
        return code == 200 and json.loads(answer).get("status") == 200

    wait_until(
        "a signed webhook accepted (the worker ran post-install setup)",
        delivered,
        seconds=60,
        processes=processes,
    )
    processed = (
        "from shoptet_api.models import WebhookEvent as W; "
        f"print(W.objects.filter(eshop__eshop_id={eshop_id}, event='eshop:projectDomain', status='processed').count())"
    )
    wait_until(
        "the webhook processed by the worker",
        lambda: manage_shell(python, env, processed) != "0",
        seconds=60,
        processes=processes,
    )
    say("signed webhook stored and processed by the worker")

    admin_page(python=python, env=env, web=web, eshop_id=eshop_id)

    status, _, body = web.request(
        "GET", "/metrics", headers={"Authorization": f"Bearer {env['METRICS_TOKEN']}"}
    )
    if status != 200:
        raise SmokeFailure(f"/metrics answered {status}")
    text = body.decode()
    if not re.search(r"^addon_installs_total\{[^}]*\} [1-9]", text, re.M):
        raise SmokeFailure("/metrics shows no successful install:\n" + text[:2000])
    # The worker's processes count into the same multiprocess directory: gunicorn's /metrics adds them up.
    if not re.search(
        r'^shoptet_webhook_processing_total\{[^}]*event="eshop:projectDomain"[^}]*\} [1-9]',
        text,
        re.M,
    ):
        raise SmokeFailure(
            "/metrics does not show the worker's processed webhook:\n" + text[:3000]
        )
    if "eshop_id" in text or str(eshop_id) in text:
        raise SmokeFailure(
            "/metrics names a tenant (per-tenant labels are not allowed)"
        )
    say(
        f"/metrics 200 with the token ({len(text.splitlines())} lines; web's install and the worker's webhook counted)"
    )


def admin_page(*, python: Path, env: dict[str, str], web: Http, eshop_id: int) -> None:
    password = secrets.token_urlsafe(16)
    run(
        [str(python), "manage.py", "ensure_operator", OPERATOR],
        env={**env, "OPERATOR_PASSWORD": password},
    )
    # Secure cookies and the CSRF check want https: a TLS proxy would say so with X-Forwarded-Proto.
    origin = f"https://127.0.0.1:{web.port}"
    https = {"X-Forwarded-Proto": "https"}
    status, _, page = web.request("GET", "/admin/login/", headers=https)
    if status != 200 or "csrftoken" not in web.cookies:
        raise SmokeFailure(f"/admin/login/ answered {status}")
    stylesheets = re.findall(rb'<link[^>]+href="(/static/admin/css/[^"]+\.css)"', page)
    if not stylesheets:
        raise SmokeFailure("the admin login page links no stylesheet")
    for href in stylesheets:
        status, headers, css = web.request(
            "GET", href.decode(), headers={"Accept-Encoding": "gzip"}
        )
        if (
            status != 200
            or not headers.get("Content-Type", "").startswith("text/css")
            or not css
        ):
            raise SmokeFailure(
                f"{href.decode()} answered {status} {headers.get('Content-Type')}"
            )
        # Hashed names from the manifest, compressed copies, cached for good.
        if headers.get("Content-Encoding") != "gzip" or "immutable" not in headers.get(
            "Cache-Control", ""
        ):
            raise SmokeFailure(
                f"{href.decode()} is not served compressed and cacheable: "
                f"{headers.get('Content-Encoding')} / {headers.get('Cache-Control')}"
            )
    say(
        f"admin CSS served by the app: {len(stylesheets)} stylesheet(s), 200 text/css, gzip, immutable ({stylesheets[0].decode()})"
    )

    form = urllib.parse.urlencode(
        {
            "username": OPERATOR,
            "password": password,
            "csrfmiddlewaretoken": web.cookies["csrftoken"],
            "next": "/admin/",
        }
    ).encode()
    status, headers, _ = web.request(
        "POST",
        "/admin/login/",
        body=form,
        headers={
            **https,
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": origin,
            "Referer": f"{origin}/admin/login/",
        },
    )
    if status != 302 or "sessionid" not in web.cookies:
        raise SmokeFailure(
            f"admin login answered {status} (expected a redirect with a session)"
        )
    status, _, page = web.request("GET", "/admin/eshops/eshop/", headers=https)
    if status != 200 or str(eshop_id).encode() not in page:
        raise SmokeFailure(
            f"the tenant list answered {status} without the installed e-shop"
        )
    say("operator logged in; the tenant list shows the installed e-shop")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="shoptet-smoke-"))
    logs = workdir / "logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    try:
        python = build_venv(workdir)
        bin_dir = python.parent
        web_port, emulator_port = free_port(), free_port()
        with database(os.environ.get("DATABASE_URL"), workdir, python) as database_url:
            env = environment(
                web_port=web_port,
                emulator_port=emulator_port,
                database_url=database_url,
                workdir=workdir,
            )
            (workdir / "metrics").mkdir()
            say(
                f"database {database_url.rsplit('/', 1)[-1]}; collectstatic, migrate, check --deploy"
            )
            run(
                [str(python), "manage.py", "collectstatic", "--no-input", "-v", "0"],
                env=env,
            )
            run([str(python), "manage.py", "migrate", "--no-input", "-v", "0"], env=env)
            # The deploy check judges the configuration a real deploy has (HTTPS redirect on).
            report = run(
                [
                    str(python),
                    "manage.py",
                    "check",
                    "--deploy",
                    "--fail-level",
                    "WARNING",
                ],
                env={**env, "SECURE_SSL_REDIRECT": "true"},
            )
            say(f"check --deploy: {report.strip().splitlines()[-1]}")
            processes["emulator"] = start(
                "emulator",
                [
                    str(python),
                    "manage.py",
                    "shoptet_emulator",
                    "--port",
                    str(emulator_port),
                ],
                env,
                logs,
            )
            processes["gunicorn"] = start(
                "gunicorn", [str(bin_dir / "gunicorn"), "addon_project.wsgi"], env, logs
            )
            processes["worker"] = start(
                "worker",
                [
                    str(bin_dir / "celery"),
                    "-A",
                    "addon_project",
                    "worker",
                    "-l",
                    "INFO",
                    "--concurrency",
                    "2",
                ],
                env,
                logs,
            )
            processes["beat"] = start(
                "beat",
                [
                    str(bin_dir / "celery"),
                    "-A",
                    "addon_project",
                    "beat",
                    "-l",
                    "INFO",
                    "--schedule",
                    str(workdir / "beat-schedule"),
                ],
                env,
                logs,
            )
            web, emulator = Http(web_port), Http(emulator_port)
            wait_until(
                "the emulator",
                lambda: emulator.request("GET", "/_emulator/stats")[0] == 200,
                seconds=30,
                processes=processes,
            )
            wait_until(
                "gunicorn",
                lambda: web.request("GET", "/healthz")[0] == 200,
                seconds=30,
                processes=processes,
            )
            checks(
                python=python, env=env, web=web, emulator=emulator, processes=processes
            )
            codes = stop(processes)
            unclean = {
                name: code
                for name, code in codes.items()
                if code not in (0, -signal.SIGTERM)
            }
            if unclean:
                raise SmokeFailure(
                    f"processes did not stop cleanly on SIGTERM: {unclean}"
                )
            say("web, worker, beat and emulator stopped on SIGTERM")
            request_id_carried_into_task(logs)
            cleanup_redis(python, env)
        say(f"passed in {time.monotonic() - started:.0f} s")
        return 0
    except (SmokeFailure, subprocess.TimeoutExpired) as exc:
        print(f"\nsmoke: FAILED: {exc}", file=sys.stderr)
        for log in sorted(logs.glob("*.log")):
            print(f"\n--- {log.name} (last lines) ---", file=sys.stderr)
            print(
                "\n".join(log.read_text(errors="replace").splitlines()[-40:]),
                file=sys.stderr,
            )
        return 1
    finally:
        stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)


def request_id_carried_into_task(logs: Path) -> None:
    """JSON logs: the webhook's request id (gunicorn's access line) is on the worker's task lines."""

    def lines(name: str) -> list[dict[str, object]]:
        text = (logs / f"{name}.log").read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    access = [
        line
        for line in lines("gunicorn")
        if "POST /webhooks/shoptet/" in str(line.get("message", ""))
    ]
    request_ids = {str(line["request_id"]) for line in access if line.get("request_id")}
    if not request_ids:
        raise SmokeFailure(
            "gunicorn's JSON access line for the webhook carries no request_id"
        )
    carried = [
        line
        for line in lines("worker")
        if line.get("request_id") in request_ids
        and line.get("task") == "shoptet_api.process_webhooks"
    ]
    if not carried:
        raise SmokeFailure(
            f"no worker line of shoptet_api.process_webhooks carries request id {request_ids}"
        )
    say(
        f"JSON logs: the webhook's request id {sorted(request_ids)[0]} is on the worker's task lines"
    )


def cleanup_redis(python: Path, env: dict[str, str]) -> None:
    code = (
        "import redis, sys; r = redis.Redis.from_url(sys.argv[1]); "
        "keys = list(r.scan_iter(match=sys.argv[2] + ':*')); r.delete(*keys) if keys else None"
    )
    run(
        [str(python), "-c", code, env["REDIS_URL"], env["SHOPTET_REDIS_PREFIX"]],
        env=env,
    )


if __name__ == "__main__":
    sys.exit(main())
