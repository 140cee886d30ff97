"""Runs the platform's services as separate processes on given infrastructure.

Used by `loyalty up` and by the end-to-end tests, so both start the services the same way.
Each service gets its own database role (provisioned here with the admin DSN), its own HTTP
port, and its logs in `<data_dir>/logs/<service>.log`.
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
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from loyalty import db, kafka
from loyalty.infra import free_port

log = structlog.get_logger(__name__)

# service name -> (python module, database schema/role suffix, default HTTP port). A service's
# environment variables are named after its schema: LOYALTY_<SCHEMA>_PG_DSN, ..._HTTP_PORT.
SERVICES: dict[str, tuple[str, str, int]] = {
    "earn": ("earn", "earn", 8081),
    "ledger": ("ledger", "ledger", 8082),
    "expiry-scheduler": ("expiry", "expiry", 8083),
    "reward-fulfilment": ("rewards", "rewards", 8084),
}


def env_prefix(name: str) -> str:
    return f"LOYALTY_{SERVICES[name][1].upper()}"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        module = SERVICES[self.name][0]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", module], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the rest of the platform."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("service.kill_after_timeout", service=self.name)
            self.kill()


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
                raise RuntimeError(
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
                        raise RuntimeError(f"{name} exited with {service.proc.returncode}; "
                                           f"see {service.log_path}")
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.get(service.url + "/readyz") as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} not ready in {timeout_s}s; "
                                           f"see {service.log_path}")
                    await asyncio.sleep(0.1)

    async def backlog(self) -> int:
        """Unconsumed records plus unpublished outbox messages, over all running services."""
        total = 0
        async with aiohttp.ClientSession() as http:
            for service in self.services.values():
                if service.proc is None or service.proc.poll() is not None:
                    continue
                async with http.get(service.url + "/metrics") as resp:
                    text = await resp.text()
                for family in text_string_to_metric_families(text):
                    if family.name in ("loyalty_consumer_lag", "loyalty_outbox_backlog"):
                        total += int(sum(s.value for s in family.samples))
        return total

    async def drain(self, timeout_s: float) -> bool:
        """Wait for zero lag and empty outboxes, seen twice in a row (metrics lag ~2 s)."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while time.monotonic() < deadline:
            try:
                quiet = quiet + 1 if await self.backlog() == 0 else 0
            except (aiohttp.ClientError, OSError):
                quiet = 0
            if quiet >= 2:
                return True
            await asyncio.sleep(kafka.LAG_INTERVAL_S)
        return False

    def stop(self) -> None:
        for service in self.services.values():
            service.terminate()
        for service in self.services.values():
            service.wait(STOP_TIMEOUT_S)
