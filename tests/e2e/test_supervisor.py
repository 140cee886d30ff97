"""`loyalty up` as a user runs it: a supervisor that heals, stops in bounded time, and leaves
nothing behind, even when it is killed with SIGKILL.

Each test runs the real command in a process of its own, on embedded infrastructure in a
temporary data folder and on free ports (so a developer's own `make run` is not disturbed).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psutil
import pytest

from loyalty import topics
from loyalty.infra import free_port
from loyalty.platform import SERVICES, env_prefix
from loyalty.testing import Api, Kafka, purchase_event, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

READY_TIMEOUT_S = 120.0
PROGRAM = "coffee-club"


@dataclass
class Up:
    proc: subprocess.Popen
    output: Path
    data_dir: Path
    ports: dict[str, int]
    env: dict[str, str]

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    @property
    def runtime(self) -> dict:
        return json.loads((self.data_dir / "runtime.json").read_text())

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


@contextmanager
def loyalty_up(tmp_path: Path, **extra_env: str) -> Iterator[Up]:
    ports = {name: free_port() for name in SERVICES}
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOYALTY_PG_DSN", "LOYALTY_KAFKA_BOOTSTRAP")}  # its own infrastructure
    env.update({f"{env_prefix(name)}_HTTP_PORT": str(port) for name, port in ports.items()})
    env.update(LOYALTY_DATA_DIR=str(tmp_path / "data"), LOYALTY_API_TOKEN="supervisor-test",
               **extra_env)
    output = tmp_path / "up.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "loyalty.cli", "up"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    up = Up(proc, output, tmp_path / "data", ports, env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ready in" not in up.text():
            assert proc.poll() is None, f"loyalty up exited:\n{up.text()}"
            assert time.monotonic() < deadline, f"not ready:\n{up.text()}"
            time.sleep(0.2)
        yield up
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie; a process that ends between the two questions has ended (its
    status then raises `NoSuchProcess`: seen once in a fresh-clone run)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_listening_on(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    raise AssertionError(f"nothing listens on {port}")


def audit(up: Up) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loyalty.cli", "audit"], env=up.env,
                          capture_output=True, text=True, timeout=60)


async def test_a_killed_ledger_is_restarted_and_every_balance_is_exact(tmp_path) -> None:
    with loyalty_up(tmp_path) as up:
        kafka = Kafka(up.runtime["kafka_bootstrap"])
        ledger = Api(up.runtime["urls"]["ledger"], "supervisor-test")
        await kafka.producer.start()
        try:
            rng = random.Random(11)
            phones = [unique_phone() for _ in range(250)]
            events = [purchase_event({"phone": rng.choice(phones)}, f"{rng.randint(1, 9)}.00")
                      for _ in range(5000)]
            expected: dict[str, int] = {}
            for e in events:
                phone = e["customer"]["phone"]
                expected[phone] = expected.get(phone, 0) + int(Decimal(e["total"]) * 10)

            await kafka.publish_many(topics.PURCHASES,
                                     [(e["order_id"], e) for e in events[:2500]])
            killed = pid_listening_on(up.ports["ledger"])
            os.kill(killed, signal.SIGKILL)
            await kafka.publish_many(topics.PURCHASES,
                                     [(e["order_id"], e) for e in events[2500:]])

            for phone, points in expected.items():
                await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                        lambda b, p=points: b["balance"] >= p, timeout_s=120)
            await asyncio.sleep(1.0)  # long enough for a double credit to land
            for phone, points in expected.items():
                _, body = await ledger.get(f"/v1/programs/{PROGRAM}/members/phone:{phone}")
                assert body["balance"] == points, phone
        finally:
            await kafka.producer.stop()

        text = up.text()
        assert f"ledger (pid {killed}) exited with signal SIGKILL" in text
        assert "ledger restarted" in text
        assert pid_listening_on(up.ports["ledger"]) != killed
        result = audit(up)
        assert result.returncode == 0, result.stdout + result.stderr

        # Ctrl-C: drains, stops everything, within 30 s.
        started = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(30) == 0
        assert time.monotonic() - started < 30
        assert "stopped." in up.text()
        assert not [p for p in up.ports.values() if listening(p)]


async def test_kill_9_of_loyalty_up_leaves_no_process_and_no_port(tmp_path) -> None:
    with loyalty_up(tmp_path) as up:
        tree = up.tree()
        names = {p.name() for p in tree}
        assert {"postgres", "tansu"} <= names and len(tree) >= 6
        up.proc.kill()
        up.proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alive = [p for p in tree if running(p)]
            ports = [p for p in up.ports.values() if listening(p)]
            if not alive and not ports:
                break
            await asyncio.sleep(0.1)
        assert alive == [] and ports == []
        # ... and the data folder is free for the next `loyalty up` (the kernel dropped its lock).
        lock = os.open(up.data_dir / "up.lock", os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(lock)


def test_a_taken_port_is_said_plainly_and_nothing_is_left_running(tmp_path) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOYALTY_PG_DSN", "LOYALTY_KAFKA_BOOTSTRAP")}
    env.update({f"{env_prefix(name)}_HTTP_PORT": str(port) for name, port in ports.items()},
               LOYALTY_DATA_DIR=str(tmp_path / "data"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["ledger"]))
        squatter.listen()
        up = subprocess.Popen([sys.executable, "-m", "loyalty.cli", "up"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
        out, err = up.communicate(timeout=120)
    assert up.returncode == 2, out + err
    assert f"error: port {ports['ledger']} for ledger is taken" in err
    assert "Traceback" not in err
    # It had started Postgres and the broker in its data folder: both are gone.
    assert "postgres" in (tmp_path / "data" / "postgres" / "pgdata" / "server.log").read_text()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or ())]


async def test_a_second_loyalty_up_on_the_same_folder_refuses_and_the_first_runs_on(
        tmp_path) -> None:
    """Two terminals, one data folder: the second says why it cannot start, and does not stop
    the first one's Postgres from under it."""
    with loyalty_up(tmp_path) as up:
        postgres = [p for p in up.tree() if p.name() == "postgres"]
        second = subprocess.run([sys.executable, "-m", "loyalty.cli", "up"], env=up.env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "already running" in second.stderr and f"pid {up.proc.pid}" in second.stderr
        assert postgres and all(running(p) for p in postgres)
        assert up.proc.poll() is None and "ledger audit: clean" in audit(up).stdout


async def test_a_stop_that_cannot_drain_says_what_is_left_and_ends_within_30_s(
        tmp_path) -> None:
    """Postgres hangs (SIGSTOP): purchases pile up unconsumed. Ctrl-C drains for the bounded
    time, names the partitions that lag, and still stops everything."""
    with loyalty_up(tmp_path) as up:
        kafka = Kafka(up.runtime["kafka_bootstrap"])
        await kafka.producer.start()
        postgres = [p for p in up.tree() if p.name() == "postgres"]
        try:
            for process in postgres:
                process.suspend()
            await kafka.publish_many(topics.PURCHASES, [
                (None, purchase_event({"phone": unique_phone()}, "1.00")) for _ in range(60)])
        finally:
            await kafka.producer.stop()
        await asyncio.sleep(3)  # the lag gauges sample every 2 s

        started = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(30)
        took = time.monotonic() - started
        text = up.text()
        assert took < 30, text
        assert "not drained; stopping anyway" in text
        assert "earn: loyalty.purchases.v1[" in text and "lag" in text
        alive = [p for p in postgres if running(p)]
        assert alive == []
        assert not [p for p in up.ports.values() if listening(p)]
