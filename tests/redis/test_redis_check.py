"""`bus config check --connect` against real Redis servers: the Redis transports' `check()`
reports reachability, refused credentials (the password never shown), the server, and per
role what the URL's user may not do (ACL DRYRUN, with the users of the ACL page), on one
server, a Sentinel set and a cluster. Nothing is written: the checks run no data command."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bus_core.cli import main
from tests.redis.conftest import RedisServer, free_port
from tests.redis.test_redis_acl import AclServer
from tests.redis.topology import RedisClusterSet, SentinelSet

SECRET = "s3cret-pw"


def write_config(folder: Path, url: str, *, apis: str = "  auth: {}\n") -> Path:
    """Every transport on `url`, service accounts (process accounts-1), API `auth`."""
    path = folder / "bus.yaml"
    transport = f'{{redis: {{url: "{url}"}}}}'
    path.write_text(textwrap.dedent(f"""\
        bus:
          service_name: accounts
          process_name: accounts-1
          schema: {{transport: {transport}}}
        apis:
          default:
            rpc_transport: {transport}
            result_transport: {transport}
            event_transport: {transport}
        """) + apis)
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str], *options: str
              ) -> tuple[int, list[str], str]:
    """`bus config check --connect [options] PATH`: (exit code, stdout lines, stderr)."""
    code = main(["config", "check", "--connect", "--timeout", "8", *options, str(path)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def section(lines: list[str], kind: str) -> list[str]:
    """The line of the `kind` transport and its note lines."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{kind} transport "))
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return lines[start:end]


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    """A server of this module with the ACL page's users, each also allowed ACL DRYRUN,
    and `shop-caller` as the page makes it (without)."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis-check"))
    server.start()
    acl = AclServer(server)
    try:
        acl.create_users()
        for user in ("accounts-producer", "mailer-consumer", "accounts-worker"):
            acl.admin.execute_command("ACL", "SETUSER", user, "+acl|dryrun")
        acl.admin.execute_command("ACL", "SETUSER", "full", "on", f">{SECRET}", "~*",
                                  "+@all")
        acl.passwords["full"] = SECRET
        yield acl
    finally:
        acl.admin.close()
        server.stop()


def assert_nothing_written(acl: AclServer) -> None:
    assert acl.admin.dbsize() == 0
    assert acl.admin.acl_log() == []  # DRYRUN refusals are not logged: no command ran


# -- one server -----------------------------------------------------------------------------


def test_a_full_user_is_ok_for_every_transport(acl_server, tmp_path, capsys):
    acl_server.clean()
    code, lines, err = run_check(write_config(tmp_path, acl_server.url("full")), capsys)
    assert code == 0, err
    for kind in ("rpc", "result", "event", "schema"):
        head, *notes = section(lines, kind)
        assert head.endswith(": ok"), head
        assert notes[0].startswith("  Redis 7."), notes
        assert "user full" in notes[0]
    assert section(lines, "event")[2] == "  may fire auth events, listen on auth events"
    assert section(lines, "rpc")[2] == "  may call auth, serve auth"
    assert SECRET not in "\n".join(lines) + err
    assert_nothing_written(acl_server)


def test_a_producer_may_fire_and_is_told_what_else_it_cannot_do(acl_server, tmp_path,
                                                                capsys):
    acl_server.clean()
    path = write_config(tmp_path, acl_server.url("accounts-producer"))
    code, lines, err = run_check(path, capsys)
    assert code == 0, err  # the roles it does not play are information
    event = section(lines, "event")
    assert event[0].endswith(": reachable; some roles refused (see below)")
    assert "  may fire auth events" in event
    assert any(line.startswith("  cannot listen on auth events: XGROUP CREATE refused")
               and "XADD refused on auth.*:stream:dead" in line for line in event), event
    assert any(line.startswith("  cannot serve auth: BLMPOP refused")
               for line in section(lines, "rpc"))
    assert lines[-1].startswith("(a role a service does not play may be refused")
    # Saying it fires makes only firing count: it passes; saying it listens fails.
    code, lines, err = run_check(path, capsys, "--role", "fire")
    assert code == 0, err
    code, lines, err = run_check(path, capsys, "--role", "listen")
    assert code == 1
    assert section(lines, "event")[0].startswith(
        "event transport redis (apis.default.event_transport, apis.auth.event_transport): "
        "cannot listen on auth events: XGROUP CREATE refused")
    assert "1 of 4 transport(s) failed their check" in err
    assert_nothing_written(acl_server)


def test_a_consumer_cannot_fire_and_a_worker_may_serve(acl_server, tmp_path, capsys):
    acl_server.clean()
    code, lines, err = run_check(write_config(tmp_path, acl_server.url("mailer-consumer")),
                                 capsys, "--role", "listen")
    assert code == 0, err
    event = section(lines, "event")
    assert "  may listen on auth events" in event
    assert "  cannot fire auth events: XADD refused on auth.*:stream" in event
    code, lines, err = run_check(write_config(tmp_path, acl_server.url("accounts-worker")),
                                 capsys, "--role", "serve")
    assert code == 0, err
    assert "  may serve auth" in section(lines, "rpc")
    assert "  may answer RPCs" in section(lines, "result")


def test_a_user_without_acl_dryrun_is_not_reported_ok(acl_server, tmp_path, capsys):
    acl_server.clean()
    path = write_config(tmp_path, acl_server.url("shop-caller"))
    code, lines, err = run_check(path, capsys)
    assert code == 0, err  # nothing known to be wrong
    rpc = section(lines, "rpc")
    assert rpc[0].endswith(": reachable; permissions not verified (see below)")
    assert any("permissions not verified: user shop-caller may not run ACL DRYRUN; grant "
               "it +acl|dryrun" in line for line in rpc), rpc
    code, lines, err = run_check(path, capsys, "--role", "call")  # asked, not verifiable
    assert code == 1
    assert "permissions not verified" in section(lines, "rpc")[0]


def test_apis_default_alone_checks_api_keys_only_when_named(acl_server, tmp_path, capsys):
    acl_server.clean()
    path = write_config(tmp_path, acl_server.url("accounts-producer"), apis="")
    code, lines, err = run_check(path, capsys)
    assert code == 0, err
    event = section(lines, "event")
    assert event[0].endswith("permissions not verified (see below)")
    assert any("no API is named for this transport" in line for line in event)
    code, lines, err = run_check(path, capsys, "--api", "auth", "--api", "billing")
    event = section(lines, "event")
    assert "  may fire auth events" in event
    assert any(line.startswith("  cannot fire billing events: XADD refused on "
                               "billing.*:stream") for line in event), event


def test_a_wrong_password_is_refused_credentials_and_never_shown(acl_server, tmp_path,
                                                                 capsys):
    url = acl_server.url("full").replace(SECRET, "not-the-password-42")
    code, lines, err = run_check(write_config(tmp_path, url), capsys)
    assert code == 1
    for kind in ("rpc", "result", "event", "schema"):
        head = section(lines, kind)[0]
        assert "refused the credentials" in head and "full:***@" in head, head
    text = "\n".join(lines) + err
    assert "not-the-password-42" not in text and SECRET not in text
    assert "4 of 4 transport(s) failed their check" in err


def test_a_dead_port_is_unreachable(tmp_path, capsys):
    code, lines, err = run_check(write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0"),
                                 capsys)
    assert code == 1
    assert "is unreachable" in section(lines, "rpc")[0]
    assert "4 of 4 transport(s) failed their check" in err


def test_a_replica_is_a_problem(acl_server, tmp_path, capsys):
    replica = RedisServer(free_port(), tmp_path / "replica",
                          extra=("--replicaof", "127.0.0.1", str(acl_server.server.port)))
    (tmp_path / "replica").mkdir()
    replica.start()
    try:
        code, lines, _ = run_check(write_config(tmp_path, replica.url), capsys)
    finally:
        replica.stop()
    assert code == 1
    assert "is a replica (read-only)" in section(lines, "event")[0]


# -- Sentinel and Cluster -------------------------------------------------------------------


def test_a_sentinel_set_is_ok_and_names_its_master(tmp_path, capsys):
    sentinels = SentinelSet(tmp_path / "sentinel", password=SECRET).start()
    try:
        code, lines, err = run_check(write_config(tmp_path, sentinels.url()), capsys)
        assert code == 0, err
        event = section(lines, "event")
        assert event[0].endswith(": ok")
        assert any("3 of 3 sentinels know master 'mymaster'" in line for line in event)
        assert SECRET not in "\n".join(lines) + err
        with redis.Redis(port=sentinels.sentinels[0].port) as sentinel:  # a wrong name
            assert sentinel.ping()
        url = sentinels.url().replace("/mymaster/", "/othermaster/")
        code, lines, _ = run_check(write_config(tmp_path, url), capsys)
        assert code == 1
        assert "no sentinel knows master 'othermaster'" in section(lines, "rpc")[0]
    finally:
        sentinels.stop()


def test_a_cluster_is_ok(tmp_path, capsys):
    cluster = RedisClusterSet(tmp_path / "cluster").start()
    try:
        code, lines, err = run_check(write_config(tmp_path, cluster.url), capsys)
        assert code == 0, err
        rpc = section(lines, "rpc")
        assert rpc[0].endswith(": ok")
        assert "  cluster state ok on all 3 masters" in rpc
        assert "  may call auth, serve auth" in rpc
        for node in cluster.nodes:
            with node.client() as client:
                assert client.dbsize() == 0
    finally:
        cluster.stop()
