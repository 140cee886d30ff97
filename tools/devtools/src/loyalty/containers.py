"""Real Apache Kafka (KRaft) and PostgreSQL in Docker containers, for the tests.

`LOYALTY_TEST_INFRA=testcontainers` runs the integration and end-to-end suites on the images
production runs (`apache/kafka`, `postgres`), started by testcontainers, instead of Tansu and
the embedded Postgres. Where no Docker engine answers, `docker_unavailable_reason` says why, and
the pytest plugin skips those suites with that reason.
"""

from __future__ import annotations

import contextlib
from typing import Any

from loyalty.infra import Infrastructure, free_port

KAFKA_IMAGE = "apache/kafka:3.9.0"
POSTGRES_IMAGE = "postgres:16"
DOCKER_PING_TIMEOUT_S = 5
KAFKA_START_TIMEOUT_S = 120
POSTGRES_PASSWORD = "loyalty-test"


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers a ping; otherwise why not, for a skip message."""
    try:
        import docker
    except ImportError as exc:
        return f"the testcontainers extra is not installed ({exc})"
    try:
        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # docker raises DockerException or a requests error; all mean "no"
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


def _kafka_container(host_port: int) -> Any:
    """`apache/kafka` in KRaft mode, one node. The client listener is published on the same
    port number on the host, so the address the broker advertises is the one clients dial."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    return (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(host_port, host_port)
        .with_envs(
            CLUSTER_ID="bG95YWx0eS1wbGF0Zm9ybQ",
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENERS=f"PLAINTEXT://:{host_port},CONTROLLER://:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://127.0.0.1:{host_port}",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            KAFKA_INTER_BROKER_LISTENER_NAME="PLAINTEXT",
            # As in production: the services create their topics; a typo must fail.
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        )
        .waiting_for(LogMessageWaitStrategy("Kafka Server started")
                     .with_startup_timeout(KAFKA_START_TIMEOUT_S))
    )


def start_container_infrastructure() -> Infrastructure:
    """Start Kafka and PostgreSQL containers; the returned infrastructure stops them."""
    from testcontainers.community.postgres import PostgresContainer

    infra = Infrastructure(pg_dsn="", kafka_bootstrap="")
    try:
        postgres = PostgresContainer(POSTGRES_IMAGE, username="postgres",
                                     password=POSTGRES_PASSWORD, dbname="loyalty", driver=None)
        # The services' pools and the tests' parallel consumers need more than 100.
        postgres.with_command("postgres -c max_connections=300 -c fsync=off")
        infra.containers.append(postgres)
        postgres.start()
        infra.pg_dsn = postgres.get_connection_url(driver=None)
        port = free_port()
        kafka = _kafka_container(port)
        infra.containers.append(kafka)
        kafka.start()
        infra.kafka_bootstrap = f"127.0.0.1:{port}"
    except BaseException:
        with contextlib.suppress(Exception):
            infra.stop()
        raise
    return infra
