"""Fixtures shared by the Python tests (tests/e2e, tests/chart, tests/alerts).

- ``free_port()``: a port on 127.0.0.1 nobody listens on, never handed out twice per session.
- ``tollgate(config)``: starts ``$TOLLGATE_BIN serve`` on free ports with a config directory
  written from ``config`` (YAML text as a user's file would be, or a dict), waits until
  ``/readyz`` answers 200 and the gRPC port accepts connections, and stops it by pid after
  the test.
- ``envoy(config)``: writes an Envoy bootstrap (dict), checks it with ``envoy --mode validate``,
  starts it with an admin port on 127.0.0.1, waits until it is live, and stops it by pid.
- ``tollgate_bin`` / ``tollgate_load_bin``: the release binaries ($TOLLGATE_BIN,
  $TOLLGATE_LOAD_BIN, set by ./scripts/test; default target/release/...).
- ``tool(name)``: the path of a command (the venv's bin first, then PATH), e.g.
  ``tool("promtool")``, ``tool("h2load")``, ``tool("prometheus")``; ``envoy_bin`` is Envoy's.
- ``harness``: the bounded helpers below (``http_request``, ``wait_until``, ``port_open``,
  ``wait_for_port``, ``free_port``, ``host``) for test modules. Tests get them through this
  fixture rather than ``import conftest``: pytest may load several conftest.py files, and the
  module named ``conftest`` in sys.modules is not always this one.

Every wait is bounded. A process started here is stopped by its pid only: SIGTERM, then
SIGKILL after a bound. The logs of the processes a test started are attached to its report
when it fails. A missing tool or binary fails the test (a skipped test is a defect) with a
message saying to run ./scripts/test, which installs and builds everything.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 8000

_handed_out_ports: set[int] = set()
_live_processes: dict[int, "ManagedProcess"] = {}


# --------------------------------------------------------------------------------------------
# Skips are failures here.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped: {reason}\n"
            "A skipped test is a defect: make it run. If a tool is missing, run ./scripts/test, "
            "which installs what the tests need."
        )
    if report.failed:
        for proc in getattr(item, "_managed_processes", []):
            report.sections.append((f"{proc.name} log (pid {proc.pid})", proc.log_tail()))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"module skipped at collection: {reason}\n"
            "A skipped test is a defect. If a tool is missing, run ./scripts/test."
        )


# --------------------------------------------------------------------------------------------
# Ports, waits, HTTP.


def _allocate_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("no free port found on 127.0.0.1 after 100 tries")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1 (distinct within the session)."""
    return _allocate_port


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = READY_TIMEOUT_S,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> None:
    """Polls ``predicate`` until true; fails the test after ``timeout`` seconds.

    ``alive`` is called between polls and should raise if the awaited process died.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_for_port(port: int, what: str = "", timeout: float = READY_TIMEOUT_S) -> None:
    wait_until(lambda: port_open(port), what or f"127.0.0.1:{port} to accept", timeout)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | str | dict | list | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpResponse:
    """One HTTP request with urllib; any status is returned (not raised). Bounded by ``timeout``."""
    data: bytes | None
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw_headers, payload = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, raw_headers, payload = err.code, err.headers, err.read()
    merged: dict[str, str] = {}
    for name, value in raw_headers.items():
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return HttpResponse(status, merged, payload)


@pytest.fixture(scope="session")
def harness() -> types.SimpleNamespace:
    """Helpers for test modules: ``harness.http_request(url, ...)`` and friends."""
    return types.SimpleNamespace(
        host=HOST,
        http_request=http_request,
        wait_until=wait_until,
        port_open=port_open,
        wait_for_port=wait_for_port,
        free_port=_allocate_port,
    )


def _http_status(url: str) -> int | None:
    try:
        return http_request(url, timeout=1.0).status
    except (OSError, urllib.error.URLError):
        return None


# --------------------------------------------------------------------------------------------
# Processes.


@dataclass
class ManagedProcess:
    """A child process started by a fixture, with its output in ``log_path``."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    @classmethod
    def start(cls, name: str, args: list[str], log_path: Path, env: dict | None = None):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        managed = cls(name, args, log_path, proc)
        _live_processes[proc.pid] = managed
        return managed

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def ensure_running(self) -> None:
        """Fails the test, with the log, if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            pytest.fail(
                f"{self.name} exited with code {code}\n"
                f"command: {' '.join(self.args)}\n--- log ---\n{self.log_tail()}"
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        text = self.log_text()
        return text if len(text) <= LOG_TAIL_CHARS else "...\n" + text[-LOG_TAIL_CHARS:]

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM by pid, then SIGKILL if still alive after ``timeout``; returns the exit code."""
        try:
            if self.running():
                os.kill(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    self.proc.wait(timeout=timeout)
        finally:
            _live_processes.pop(self.pid, None)
        return self.proc.returncode


@atexit.register
def _kill_leftovers() -> None:
    # Safety net for an interrupted session: only our own children, by pid.
    for managed in list(_live_processes.values()):
        if managed.running():
            os.kill(managed.pid, signal.SIGKILL)
            managed.proc.wait(timeout=STOP_TIMEOUT_S)


def _attach(request: pytest.FixtureRequest, proc: ManagedProcess) -> None:
    node = request.node
    if not hasattr(node, "_managed_processes"):
        node._managed_processes = []
    node._managed_processes.append(proc)


# --------------------------------------------------------------------------------------------
# Binaries and tools.


def _binary_from_env(var: str, default: Path, what: str) -> Path:
    path = Path(os.environ.get(var) or default)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{what} not found at {path} (${var}): run ./scripts/test, which builds it "
            "(cargo build --release --workspace --bins) and sets it"
        )
    return path


@pytest.fixture(scope="session")
def tollgate_bin() -> Path:
    return _binary_from_env("TOLLGATE_BIN", REPO / "target/release/tollgate", "tollgate binary")


@pytest.fixture(scope="session")
def tollgate_load_bin() -> Path:
    return _binary_from_env(
        "TOLLGATE_LOAD_BIN", REPO / "target/release/tollgate-load", "tollgate-load binary"
    )


def require_tool(name: str) -> str:
    """The path of a command the tests need (the venv's bin first), or a failed test."""
    venv_bin = Path(sys.prefix) / "bin" / name
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found: run ./scripts/test, which installs it")
    return found


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """``tool("promtool")`` -> its path, or a failed test saying to run ./scripts/test."""
    return require_tool


# --------------------------------------------------------------------------------------------
# tollgate.


@dataclass
class Tollgate:
    process: ManagedProcess
    config_dir: Path
    grpc_port: int
    http_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_addr(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def get(self, path: str, **kw: Any) -> HttpResponse:
        return http_request(self.http_url + path, **kw)

    def post_json(self, path: str, body: Any, **kw: Any) -> HttpResponse:
        return http_request(self.http_url + path, method="POST", body=body, **kw)

    def write_config(self, name: str, config: str | dict) -> Path:
        """Writes (or replaces) one config file in the watched directory, atomically."""
        return _write_config_file(self.config_dir, name, config)

    def log(self) -> str:
        return self.process.log_text()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        wait_until(
            lambda: _http_status(self.http_url + "/readyz") == 200,
            f"tollgate {self.http_url}/readyz to answer 200",
            timeout,
            alive=self.process.ensure_running,
        )
        wait_until(
            lambda: port_open(self.grpc_port),
            f"tollgate gRPC port {self.grpc_addr} to accept",
            timeout,
            alive=self.process.ensure_running,
        )

    def stop(self) -> int:
        return self.process.stop()


def _write_config_file(directory: Path, name: str, config: str | dict) -> Path:
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    # Written beside the watched directory, then renamed in: a watcher never sees half a file.
    tmp = directory.parent / f".{directory.name}.{name}.tmp"
    tmp.write_text(text)
    tmp.replace(target)
    return target


_instance_ids = itertools.count(1)


@pytest.fixture
def tollgate(
    request: pytest.FixtureRequest, tmp_path: Path, tollgate_bin: Path
) -> Iterator[Callable[..., Tollgate]]:
    """Factory: ``tollgate(config, extra_args=(), files=None, wait=True, env=None)``.

    ``config`` is one file's content (YAML text or a dict) written as ``config.yaml``;
    ``files`` maps more file names to contents. The directory is passed as ``--config``.
    """
    started: list[Tollgate] = []

    def start(
        config: str | dict | None = None,
        *,
        files: dict[str, str | dict] | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> Tollgate:
        n = next(_instance_ids)
        home = tmp_path / f"tollgate-{n}"
        config_dir = home / "config"
        config_dir.mkdir(parents=True)
        if config is not None:
            _write_config_file(config_dir, "config.yaml", config)
        for name, content in (files or {}).items():
            _write_config_file(config_dir, name, content)
        grpc_port, http_port = _allocate_port(), _allocate_port()
        args = [
            str(tollgate_bin),
            "serve",
            "--config",
            str(config_dir),
            "--grpc-addr",
            f"{HOST}:{grpc_port}",
            "--http-addr",
            f"{HOST}:{http_port}",
            *extra_args,
        ]
        # The caller's TOLLGATE_* settings (flags' env fallbacks) must not leak into a test.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        # Its log goes to a file shown on failure: plain text reads better there.
        child_env = {**inherited, "NO_COLOR": "1", **(env or {})}
        process = ManagedProcess.start(f"tollgate-{n}", args, home / "tollgate.log", child_env)
        _attach(request, process)
        instance = Tollgate(process, config_dir, grpc_port, http_port)
        started.append(instance)
        if wait:
            instance.wait_ready(ready_timeout)
        return instance

    yield start
    for instance in reversed(started):
        instance.stop()


# --------------------------------------------------------------------------------------------
# Envoy.


@dataclass
class Envoy:
    process: ManagedProcess
    config_path: Path
    admin_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges by name (``/stats?format=json``)."""
        resp = http_request(self.admin_url + "/stats?format=json")
        assert resp.status == 200, f"envoy admin /stats answered {resp.status}: {resp.text()}"
        out: dict[str, int] = {}
        for stat in resp.json().get("stats", []):
            if "name" in stat and isinstance(stat.get("value"), int):
                out[stat["name"]] = stat["value"]
        return out

    def log(self) -> str:
        return self.process.log_text()

    def stop(self) -> int:
        return self.process.stop()


def validate_envoy_config(envoy_bin: str, config_path: Path) -> None:
    """``envoy --mode validate``; fails the test with Envoy's message if the config is refused."""
    result = subprocess.run(
        [envoy_bin, "--mode", "validate", "-c", str(config_path), "-l", "warning"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(
            f"envoy refused {config_path} (exit {result.returncode}):\n"
            f"{result.stdout[-LOG_TAIL_CHARS:]}{result.stderr[-LOG_TAIL_CHARS:]}"
        )


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    return require_tool("envoy")


@pytest.fixture
def envoy(
    request: pytest.FixtureRequest, tmp_path: Path, envoy_bin: str
) -> Iterator[Callable[..., Envoy]]:
    """Factory: ``envoy(bootstrap_dict, wait_ports=(), log_level="warning")``.

    The admin section is added on a free 127.0.0.1 port. The config is validated first.
    Waits until the admin ``/ready`` says LIVE and every port in ``wait_ports`` accepts.
    """
    started: list[Envoy] = []

    def start(
        bootstrap: dict,
        *,
        wait_ports: tuple[int, ...] | list[int] = (),
        log_level: str = "warning",
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> Envoy:
        n = next(_instance_ids)
        home = tmp_path / f"envoy-{n}"
        home.mkdir(parents=True)
        admin_port = _allocate_port()
        bootstrap = {
            **bootstrap,
            "admin": {"address": {"socket_address": {"address": HOST, "port_value": admin_port}}},
        }
        config_path = home / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        validate_envoy_config(envoy_bin, config_path)
        args = [
            envoy_bin,
            "-c",
            str(config_path),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            # Access logs are flushed every 10 s by default: a test reading them would race that.
            "--file-flush-interval-msec",
            "100",
            "-l",
            log_level,
        ]
        process = ManagedProcess.start(f"envoy-{n}", args, home / "envoy.log")
        _attach(request, process)
        instance = Envoy(process, config_path, admin_port)
        started.append(instance)
        wait_until(
            lambda: _http_status(instance.admin_url + "/ready") == 200,
            f"envoy admin {instance.admin_url}/ready to answer 200 (LIVE)",
            ready_timeout,
            alive=process.ensure_running,
        )
        for port in wait_ports:
            wait_until(
                lambda: port_open(port),
                f"envoy listener 127.0.0.1:{port} to accept",
                ready_timeout,
                alive=process.ensure_running,
            )
        return instance

    yield start
    for instance in reversed(started):
        instance.stop()
