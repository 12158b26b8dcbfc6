#!/usr/bin/env python3
"""The workspace's one entry point: set up `.venv`, then run the demo, the tests or the benchmarks.

    python3 dev.py demo     install everything (first run only) and run the quickstart example
    python3 dev.py test     install everything (first run only) and run the whole test suite
    python3 dev.py bench    run the benchmarks in bench/
    python3 dev.py setup    only (re)install

Needs nothing but Python 3.10+ and network access to PyPI. With npm (Node.js) on the PATH it
also fetches the official AsyncAPI JSON Schemas (npm `@asyncapi/specs`) into
`.venv/asyncapi-specs`, for the AsyncAPI validation tests (skipped without them).
Set-up is skipped while no `pyproject.toml` of the workspace (nor the root's `setup.py`) has
changed since the last install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
# Workspace members, installed editable in this order (each is its own distribution).
MEMBERS = [".", "transports_memory", "transports_redis", "plugins/schema", "plugins/state",
           "plugins/metrics", "plugins/otel", "plugins/outbox", "plugins/web"]
STAMP = VENV / ".bus-installed"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for member in MEMBERS:
        digest.update((ROOT / member / "pyproject.toml").read_bytes())
    digest.update((ROOT / "setup.py").read_bytes())  # bus-core's dependencies
    return digest.hexdigest()


def setup(force: bool = False) -> Path:
    """Create `.venv` and install every member editable with the dev extras."""
    python = venv_python()
    if not python.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    fingerprint = _fingerprint()
    if not force and STAMP.exists() and STAMP.read_text() == fingerprint:
        fetch_asyncapi_specs()
        return python
    print("dev.py: installing the workspace into .venv (first run takes a minute)", flush=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    targets: list[str] = []
    for member in MEMBERS:
        path = str(ROOT / member)
        targets += ["-e", path + "[dev]" if member == "." else path]
    # Quiet the build backend's per-package "editable installation" notices (a screenful).
    # bus-core depends on bus-memory; installed from a checkout that is a direct reference to
    # transports_memory/ (setup.py), which pip refuses next to the editable install of that
    # same folder below: here the requirement is by name, which the editable one satisfies.
    quiet = {**os.environ, "PYTHONWARNINGS": "ignore", "BUS_MEMORY_REQUIREMENT": "bus-memory"}
    subprocess.run([*pip, *targets], check=True, env=quiet)
    STAMP.write_text(fingerprint)
    fetch_asyncapi_specs()
    return python


ASYNCAPI_SPECS = VENV / "asyncapi-specs"  # npm --prefix: node_modules/@asyncapi/specs


def fetch_asyncapi_specs() -> None:
    """Install the npm package `@asyncapi/specs` (the AsyncAPI project's JSON Schemas) into
    `.venv/asyncapi-specs` once, when npm is there; tests/schema/test_asyncapi.py validates
    against it and skips, saying why, without it. A failure is reported, not fatal."""
    import shutil

    if (ASYNCAPI_SPECS / "node_modules" / "@asyncapi" / "specs" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        print("dev.py: npm not found: the AsyncAPI validation tests will be skipped "
              "(install Node.js/npm and run `python3 dev.py setup`)", flush=True)
        return
    print(f"dev.py: fetching @asyncapi/specs into {ASYNCAPI_SPECS} (npm)", flush=True)
    done = subprocess.run([npm, "install", "--prefix", str(ASYNCAPI_SPECS), "--no-audit",
                           "--no-fund", "--no-save", "--silent", "@asyncapi/specs@6"])
    if done.returncode != 0:
        print("dev.py: warning: npm could not install @asyncapi/specs; the AsyncAPI "
              "validation tests will be skipped", flush=True)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command in {"help", "-h", "--help"}:
        print(__doc__)
        return 0
    if command not in {"setup", "demo", "test", "bench"}:
        print(f"dev.py: unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return 2
    python = setup(force=command == "setup" and "--force" in rest)
    os.chdir(ROOT)
    if command == "setup":
        return 0
    if command == "demo":
        return subprocess.call([str(python), "examples/quickstart/demo.py", *rest])
    if command == "bench":
        return subprocess.call([str(python), "bench/run.py", *rest])
    return subprocess.call([str(python), "-m", "pytest", "-n", "auto", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
