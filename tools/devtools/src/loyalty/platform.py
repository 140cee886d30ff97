"""Runs the platform's services as separate processes on given infrastructure, supervised.

Used by `loyalty up` and by the end-to-end tests, so both start the services the same way.
Each service gets its own database role (provisioned here with the admin DSN), its own HTTP
port, and its logs in `<data_dir>/logs/<service>.log`.

The supervisor is the local stand-in for systemd or Kubernetes:
- a service that dies is restarted with backoff (1 s, 2 s, 4 s ... up to 30 s), and the
  terminal is told which, when and why (its exit code or signal and the last line of its log);
  one that dies `RESTARTS_MAX` times within `RESTART_WINDOW_S` is reported and left stopped,
  never restarted in a tight loop;
- no service outlives the supervisor, even when it is SIGKILLed: each is started with the
  parent-death signal (`loyalty.processes`);
- stopping is bounded: a drain of `drain_timeout_s` that reports what it could not finish,
  then SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from loyalty import db, kafka
from loyalty.infra import StartupError, free_port
from loyalty.logging import mask_pii
from loyalty.processes import dies_with_parent

log = structlog.get_logger(__name__)

# service name -> (python module, database schema/role suffix, default HTTP port). A service's
# environment variables are named after its schema: LOYALTY_<SCHEMA>_PG_DSN, ..._HTTP_PORT.
SERVICES: dict[str, tuple[str, str, int]] = {
    "earn": ("earn", "earn", 8081),
    "ledger": ("ledger", "ledger", 8082),
    "expiry-scheduler": ("expiry", "expiry", 8083),
    "reward-fulfilment": ("rewards", "rewards", 8084),
}


def _clock() -> str:
    """Local wall-clock time for the terminal (when a service died or came back)."""
    return time.strftime("%H:%M:%S")


def env_prefix(name: str) -> str:
    return f"LOYALTY_{SERVICES[name][1].upper()}"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 3.0  # SIGTERM to SIGKILL: a drained service stops in well under a second
SUPERVISE_INTERVAL_S = 0.5
RESTART_BACKOFF_START_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTARTS_MAX = 5
RESTART_WINDOW_S = 120.0
LOG_TAIL_BYTES = 8192


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    crashes: list[float] = field(default_factory=list)  # monotonic times, within the window
    restart_at: float | None = None  # set while a restart is pending
    given_up: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        module = SERVICES[self.name][0]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Its own session: a Ctrl-C in the terminal reaches the supervisor only, which
            # drains before it stops anything. SIGKILL when the supervisor dies: the inbox and
            # outbox make a crash at any line safe.
            self.proc = subprocess.Popen([sys.executable, "-m", module], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         preexec_fn=dies_with_parent(signal.SIGKILL))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the rest of the platform."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def last_log_line(self) -> str:
        """The last line the service wrote (masked: it may quote a phone or an e-mail)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return mask_pii(lines[-1])[:300] if lines else ""


def describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


@dataclass
class Platform:
    """The services of the platform, on a Postgres admin DSN and a Kafka bootstrap address."""

    admin_dsn: str
    bootstrap: str
    api_token: str
    data_dir: Path
    fixed_ports: bool = True
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    async def prepare(self) -> None:
        """Database roles and schemas, and topics: idempotent."""
        await kafka.ensure_topics(self.bootstrap)
        for name, (_, schema, _) in SERVICES.items():
            dsn = await db.provision_service(self.admin_dsn, schema)
            port = self._port(name)
            env = {
                **os.environ,
                "LOYALTY_KAFKA_BOOTSTRAP": self.bootstrap,
                "LOYALTY_API_TOKEN": self.api_token,
                f"{env_prefix(name)}_PG_DSN": dsn,
                f"{env_prefix(name)}_HTTP_PORT": str(port),
            }
            env.pop("LOYALTY_PG_DSN", None)  # a service only ever sees its own role
            self.services[name] = ServiceProcess(name, port, env,
                                                 self.data_dir / "logs" / f"{name}.log")

    def _port(self, name: str) -> int:
        if not self.fixed_ports:
            return free_port()
        port = int(os.environ.get(f"{env_prefix(name)}_HTTP_PORT", SERVICES[name][2]))
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise StartupError(
                    f"port {port} for {name} is taken (another `loyalty up`?); stop it or set "
                    f"{env_prefix(name)}_HTTP_PORT")
        return port

    def add_replica(self, name: str) -> str:
        """Another process of a prepared service (same group, own port); returns its key."""
        base = self.services[name]
        key = f"{name}#{sum(1 for s in self.services.values() if s.name == name) + 1}"
        port = free_port()
        env = {**base.env, f"{env_prefix(name)}_HTTP_PORT": str(port)}
        self.services[key] = ServiceProcess(name, port, env,
                                            self.data_dir / "logs" / f"{key}.log")
        return key

    async def consumed(self, key: str, topic: str) -> float:
        """Records a running service process took from `topic` (its metrics)."""
        async with aiohttp.ClientSession() as http, \
                http.get(self.services[key].url + "/metrics") as resp:
            text = await resp.text()
        return sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name == "loyalty_messages_consumed"
                   for sample in family.samples
                   if sample.labels.get("topic") == topic and sample.name.endswith("_total"))

    def start(self, *names: str) -> None:
        for name in names or tuple(self.services):
            self.services[name].start()

    async def wait_ready(self, *names: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            for name in names or tuple(self.services):
                service = self.services[name]
                while True:
                    if service.proc is not None and service.proc.poll() is not None:
                        raise StartupError(f"{name} exited with {service.proc.returncode}; "
                                           f"see {service.log_path}")
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.get(service.url + "/readyz") as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} not ready in {timeout_s}s; "
                                           f"see {service.log_path}")
                    await asyncio.sleep(0.1)

    async def leftovers(self) -> list[str]:
        """What is not done yet, over all running services: consumer lag per partition and
        unpublished outbox rows, read from their /metrics (empty when all is drained)."""
        left: list[str] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for key, service in self.services.items():
                if not service.running:
                    continue
                async with http.get(service.url + "/metrics") as resp:
                    text = await resp.text()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.value <= 0:
                            continue
                        if family.name == "loyalty_consumer_lag":
                            left.append(f"{key}: {sample.labels['topic']}"
                                        f"[{sample.labels['partition']}] lag {sample.value:.0f}")
                        elif family.name == "loyalty_outbox_backlog":
                            left.append(f"{key}: outbox {sample.value:.0f} rows")
        return left

    async def drain(self, timeout_s: float) -> list[str]:
        """Wait for zero lag and empty outboxes, seen twice in a row (metrics lag ~2 s);
        returns what is left when `timeout_s` runs out (empty: drained)."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        left = ["no service answered"]
        while True:
            try:
                left = await self.leftovers()
                quiet = quiet + 1 if not left else 0
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                left, quiet = [f"metrics unreadable: {exc}"], 0
            if quiet >= 2:
                return []
            pause = min(kafka.LAG_INTERVAL_S, deadline - time.monotonic())
            if pause <= 0:
                return left
            await asyncio.sleep(pause)

    async def supervise(self, report: Callable[[str], None], stop: asyncio.Event) -> None:
        """Restart services that die, with backoff, telling `report` about each, until `stop`."""
        while not stop.is_set():
            now = time.monotonic()
            for key, service in self.services.items():
                if service.proc is None or service.given_up or service.running:
                    continue
                if service.restart_at is None:
                    self._crashed(key, service, now, report)
                elif now >= service.restart_at:
                    service.restart_at = None
                    service.start()
                    report(f"{_clock()} {key} restarted (pid {service.proc.pid})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SUPERVISE_INTERVAL_S)

    def _crashed(self, key: str, service: ServiceProcess, now: float,
                 report: Callable[[str], None]) -> None:
        assert service.proc is not None
        service.crashes = [t for t in service.crashes if now - t < RESTART_WINDOW_S] + [now]
        why = (f"{_clock()} {key} (pid {service.proc.pid}) exited with "
               f"{describe_exit(service.proc.returncode)}; last log line: "
               f"{service.last_log_line() or '(none)'}")
        if len(service.crashes) > RESTARTS_MAX:
            service.given_up = True
            report(f"{why}\n{key} died {len(service.crashes)} times in "
                   f"{RESTART_WINDOW_S:.0f}s: not restarting it; see {service.log_path}")
            return
        delay = min(RESTART_BACKOFF_START_S * 2 ** (len(service.crashes) - 1),
                    RESTART_BACKOFF_MAX_S)
        service.restart_at = now + delay
        report(f"{why}\nrestarting {key} in {delay:.0f}s")

    def stop(self) -> None:
        """SIGTERM to every service, then SIGKILL to those still running after
        `STOP_TIMEOUT_S` (all at once, not one timeout per service)."""
        for service in self.services.values():
            service.restart_at = None
            service.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in self.services.values():
            if service.proc is None:
                continue
            try:
                service.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service.kill_after_timeout", service=service.name)
                service.kill()
