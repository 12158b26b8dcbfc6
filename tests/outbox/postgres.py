"""A real PostgreSQL server for the outbox tests: a fresh cluster made with the installed
server binaries (initdb, pg_ctl) in a temporary folder, on a free loopback port, owned and run
by an unprivileged user when the tests run as root (PostgreSQL refuses to run as root).

One cluster per test process (each xdist worker makes its own), stopped at the end. No test
touches the machine's own PostgreSQL."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.redis.conftest import free_port

UNPRIVILEGED_USER = "nobody"


def find_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/<version>/bin, else the PATH; None when there are none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass

    def version(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version,
                                           reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@dataclass
class PostgresServer:
    """A PostgreSQL cluster this test run made and runs."""

    bindir: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bus-pg-")))
    user: str = "postgres"
    started: bool = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A URL with the password in it (what a user puts in BUS config via the env)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", UNPRIVILEGED_USER, "--", *argv]

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        result = subprocess.run(self._as_owner(argv), capture_output=True, text=True,
                                timeout=timeout, cwd=self.folder)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")

    def start(self) -> None:
        os.chmod(self.folder, 0o700)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                   "--pwfile", str(pwfile), "--auth-host=scram-sha-256",
                   "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        pwfile.unlink()
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                   "-o", options, "-w", "-t", "60", "start"], timeout=90)
        self.started = True
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not accept connections:\n"
                                       + self.log.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                           "-w", "stop"], timeout=60)
            self.started = False
        shutil.rmtree(self.folder, ignore_errors=True)
