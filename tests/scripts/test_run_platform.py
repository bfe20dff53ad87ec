"""`make run` (scripts/run_platform.py) stops cleanly however it is ended and says who holds a port.

The real runner runs as a subprocess on free ports, with its own SQLite file, Redis key prefix and
Celery queue (Redis database 15, as the other tests), so it cannot meet a developer's `make run`.
Each full run takes some 15-25 s: the tests share as few as they can.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from addon_project.redis_client import get_redis

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run_platform.py"
BANNER = "Platform is up"
# Bounded waits (seconds): a failure shows the runner's output instead of hanging the suite.
UP_WITHIN = 120
STOPPED_WITHIN = 40

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="needs Linux /proc"
)


def load_runner_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_platform", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stat_of(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    fields = stat_of(pid)
    return (
        fields[19] if fields else None
    )  # field 22: start time, tells a reused PID apart


def descendants(root: int) -> dict[int, str]:
    """Every live process below `root` (children, grandchildren …): PID -> start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_of(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if (started := start_time(pid)) is not None:
            found[pid] = started
        todo.extend(children.get(pid, []))
    return found


def alive(pid: int, started: str) -> bool:
    """Still running: the same process (not a reused PID) and not a zombie awaiting its reaper."""
    fields = stat_of(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


class Runner:
    """One `scripts/run_platform.py` on a terminal of its own (a pty it controls, like a shell's)."""

    def __init__(self, env: dict[str, str], web_port: int, emulator_port: int) -> None:
        self.web_port, self.emulator_port = web_port, emulator_port
        self.master, slave = pty.openpty()
        self.output = b""
        self._reading = True
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            # The pty becomes the runner's controlling terminal: closing it hangs the runner up.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.children: dict[int, str] = {}

    def _read(self) -> None:
        while self._reading:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # every writer has closed the terminal
                return
            if not chunk:
                return
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def wait_for_banner(self) -> None:
        wait_until(
            lambda: BANNER in self.text or self.process.poll() is not None, UP_WITHIN
        )
        assert BANNER in self.text, f"the runner did not come up:\n{self.text[-6000:]}"
        self.children = descendants(self.process.pid)

    def close_terminal(self) -> None:
        """What closing a terminal window does to the shell's job: the pty hangs up."""
        self._reading = False
        self._reader.join()
        os.close(self.master)
        self.master = -1

    def cleanup(self) -> None:
        """Kill whatever is left, whatever happened in the test."""
        for pid in {**self.children, **descendants(self.process.pid)}:
            kill_group(pid)
        kill_group(self.process.pid)
        self.process.wait(timeout=10)
        if self.master != -1:
            self._reading = False
            self._reader.join()
            os.close(self.master)


@pytest.fixture
def runner_env(tmp_path: Path) -> Iterator[Callable[..., dict[str, str]]]:
    """The environment for a runner of this test's own: SQLite file, Redis prefix, Celery queue."""
    namespace = f"test-run-{uuid.uuid4().hex[:10]}"
    inherited = {
        name: value
        for name, value in os.environ.items()
        # Nothing of the test run's own configuration (eager Celery, test keys) leaks in.
        if not name.startswith(
            ("SHOPTET_", "CELERY_", "SECRET_KEY", "FIELD_", "DEBUG", "ALLOWED_")
        )
        and name not in ("DATABASE_URL", "REDIS_URL", "WEB_PORT", "EMULATOR_PORT")
    }

    def make(
        web_port: int, emulator_port: int, database: Path | None = None
    ) -> dict[str, str]:
        return {
            **inherited,
            "DATABASE_URL": f"sqlite:///{database or tmp_path / 'db.sqlite3'}",
            "REDIS_URL": "redis://127.0.0.1:6379/15",
            "SHOPTET_REDIS_PREFIX": namespace,
            "CELERY_TASK_DEFAULT_QUEUE": namespace,
            "WEB_PORT": str(web_port),
            "EMULATOR_PORT": str(emulator_port),
        }

    yield make
    redis = get_redis()
    keys = [*redis.scan_iter(match=f"{namespace}*"), f"_kombu.binding.{namespace}"]
    redis.delete(*keys)


@pytest.fixture
def start_runner(
    runner_env: Callable[..., dict[str, str]],
) -> Iterator[Callable[..., Runner]]:
    started: list[Runner] = []

    def start(**kwargs: Path) -> Runner:
        web_port, emulator_port = free_port(), free_port()
        runner = Runner(
            runner_env(web_port, emulator_port, **kwargs), web_port, emulator_port
        )
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.cleanup()


def run_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A runner that is expected to refuse to start: its exit code and output.

    Should it start after all, it and its children are killed (bounded wait, nothing leaks).
    """
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        for pid in descendants(process.pid):
            kill_group(pid)
        kill_group(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"the runner did not refuse to start:\n{stdout[-4000:]}{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_everything_stopped(runner: Runner) -> None:
    assert runner.process.wait(timeout=STOPPED_WITHIN) == 0, runner.text[-4000:]
    # The emulator, web server, worker with its pool processes, and beat.
    assert len(runner.children) >= 4, runner.children
    wait_until(
        lambda: not any(alive(pid, t) for pid, t in runner.children.items()),
        STOPPED_WITHIN,
    )
    left = [pid for pid, started in runner.children.items() if alive(pid, started)]
    assert left == [], runner.text[-4000:]
    assert not port_open(runner.web_port)
    assert not port_open(runner.emulator_port)


def test_while_up_a_second_instance_is_refused_and_sigterm_then_stops_every_child(
    start_runner: Callable[..., Runner],
    runner_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    runner = start_runner()
    runner.wait_for_banner()

    second = run_once(runner_env(free_port(), free_port()))
    own_database_same_port = run_once(
        runner_env(runner.web_port, free_port(), database=tmp_path / "other.sqlite3")
    )

    assert second.returncode == 1
    assert "another `make run` is already running on this database" in second.stderr
    assert f"PID {runner.process.pid}" in second.stderr
    assert f"web server {runner.web_port}" in second.stderr
    assert f"emulator {runner.emulator_port}" in second.stderr
    assert (
        f"port {runner.web_port} is used by the web server of another `make run` from this "
        f"clone (runner PID {runner.process.pid}" in own_database_same_port.stderr
    )
    assert BANNER in runner.text  # the first one carried on

    runner.process.send_signal(signal.SIGTERM)

    assert_everything_stopped(runner)
    assert "run: stopping (SIGTERM)" in runner.text


def test_closing_the_terminal_stops_every_child(
    start_runner: Callable[..., Runner],
) -> None:
    runner = start_runner()
    runner.wait_for_banner()

    runner.close_terminal()

    assert_everything_stopped(runner)


def test_children_die_with_a_runner_killed_outright() -> None:
    # The runner's preexec_fn on a stand-in child; SIGKILL of the parent must take the child along.
    parent_code = (
        "import importlib.util, subprocess, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('run_platform', {str(SCRIPT)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
        "    start_new_session=True, preexec_fn=module.die_with_runner())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        started = start_time(child)
        assert started is not None

        parent.kill()
        parent.wait()

        wait_until(lambda: not alive(child, started), STOPPED_WITHIN)
        assert not alive(child, started)
    finally:
        parent.kill()
        parent.wait()
        if child:
            kill_group(child)


def test_a_port_held_by_our_own_leftover_is_named_with_its_pid_and_how_to_stop_it(
    runner_env: Callable[..., dict[str, str]],
) -> None:
    port = free_port()
    # What a runner that died without stopping its children leaves behind.
    leftover = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "shoptet_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={
            **runner_env(free_port(), port),
            "DEBUG": "true",
            "SHOPTET_ALLOW_HTTP": "true",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: port_open(port), UP_WITHIN)

        refused = run_once(runner_env(free_port(), port))

        assert refused.returncode == 1
        assert f"port {port} is held by PID {leftover.pid}" in refused.stderr
        assert "the emulator left over from an earlier" in refused.stderr
        assert re.search(rf"kill [\d ]*\b{leftover.pid}\b", refused.stderr), (
            refused.stderr
        )
    finally:
        kill_group(leftover.pid)
        leftover.wait()


def test_a_port_held_by_another_program_is_named_as_not_ours(
    runner_env: Callable[..., dict[str, str]],
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])

        refused = run_once(runner_env(port, free_port()))

    assert refused.returncode == 1
    assert (
        f"port {port} is in use by PID {os.getpid()} ({Path('/proc/self/comm').read_text().strip()}), "
        "not by this platform; stop it or set WEB_PORT" in refused.stderr
    )


@pytest.mark.parametrize(
    ("args", "role"),
    [
        (["/v/bin/python", "manage.py", "runserver", "127.0.0.1:8000"], "web server"),
        (["python", "manage.py", "shoptet_emulator", "--port", "1"], "emulator"),
        (["python", "-m", "celery", "-A", "addon_project", "worker"], "worker"),
        (["/v/bin/celery", "-A", "addon_project", "beat"], "beat"),
        (["python", "manage.py", "migrate"], None),
        (["python", "-m", "celery", "-A", "otherproject", "worker"], None),
        (["nginx", "-g", "daemon off;"], None),
    ],
)
def test_our_processes_are_told_apart_by_their_command_line(
    args: list[str], role: str | None
) -> None:
    assert load_runner_module().our_role(args) == role


def test_celery_queue_name_comes_from_the_environment() -> None:
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from addon_project.celery import app; print(app.conf.task_default_queue)",
        ],
        cwd=ROOT,
        env={**os.environ, "CELERY_TASK_DEFAULT_QUEUE": "instance-two"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert shown.stdout.strip() == "instance-two"


def test_unreachable_redis_is_reported_without_its_password(
    runner_env: Callable[..., dict[str, str]],
) -> None:
    closed = free_port()
    env = {
        **runner_env(free_port(), free_port()),
        "REDIS_URL": f"redis://:not-to-be-shown@127.0.0.1:{closed}/15",
    }

    refused = run_once(env)

    assert refused.returncode == 1
    assert (
        f"Redis is not reachable at redis://:***@127.0.0.1:{closed}/15"
        in refused.stderr
    )
    assert "not-to-be-shown" not in refused.stdout + refused.stderr
