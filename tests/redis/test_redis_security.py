"""TLS (rediss://) and ACL users: they work, and secrets stay out of errors and logs."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

import bus_core
from bus_core import TransportError
from tests.apis import AuthApi
from tests.redis.conftest import RedisServer, assert_round_trip, free_port, redis_config


def _certificate(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def test_tls_with_rediss_urls(tmp_path):
    server = RedisServer(free_port(), tmp_path, tls=_certificate(tmp_path))
    server.start()
    try:
        cert = server.tls[0]  # type: ignore[index]
        assert_round_trip(f"{server.url}?ssl_ca_certs={cert}")
    finally:
        server.stop()


def test_acl_user_with_password_and_database_number(tmp_path, caplog):
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        with server.client() as admin:
            admin.execute_command("ACL", "SETUSER", "orders", "on", ">pa55word", "~*", "&*",
                                  "+@all")
        good = f"redis://orders:pa55word@127.0.0.1:{server.port}/3"
        assert_round_trip(good)
        with server.client(db=3) as admin:
            assert admin.dbsize() > 0  # the bus used database 3
        bad = f"redis://orders:wrong-s3cret@127.0.0.1:{server.port}/3"
        caller = bus_core.create(redis_config(bad, rpc_timeout=1), service_name="caller")
        with server.client() as admin:
            before = admin.info("stats")["total_connections_received"]
            try:
                with caplog.at_level(logging.DEBUG), pytest.raises(TransportError) as caught:
                    caller.auth.check_password(username="a", password="b")
            finally:
                caller.client.close()
            # Refused credentials are not retried like a dropped connection: one attempt.
            assert admin.info("stats")["total_connections_received"] - before == 1
        assert "refused the credentials" in str(caught.value)
        assert "orders:***@" in str(caught.value)
        assert "wrong-s3cret" not in str(caught.value)
        assert all("wrong-s3cret" not in record.getMessage() for record in caplog.records)
    finally:
        server.stop()


def test_an_rpc_only_worker_with_refused_credentials_fails_at_start(tmp_path):
    server = RedisServer(free_port(), tmp_path, extra=("--requirepass", "r1ght-pa55"))
    server.start()
    bad = f"redis://:wr0ng-pa55@127.0.0.1:{server.port}/0"
    worker = bus_core.create(redis_config(bad), service_name="rpc_only")
    try:
        worker.client.register_api(AuthApi())  # serves RPCs; no listener, no task
        with pytest.raises(TransportError, match="refused the credentials") as caught:
            worker.client.start_worker(events=False, tasks=False)
        assert "wr0ng-pa55" not in str(caught.value)
        assert worker.client.running_workers == []
    finally:
        worker.client.close()
        server.stop()
