"""What `import bus_core` and `bus --help` load: the kernel and the plugins' entry points,
never the heavy libraries only some commands need (jsonschema, PyYAML, redis-py, Starlette,
Jinja2, psycopg). How long that takes is measured in bench/startup_bench.py; here, that the
modules stay out."""

from __future__ import annotations

import json
import sys

from tests.conftest import run_python

HEAVY = ("jsonschema", "yaml", "redis", "starlette", "jinja2", "psycopg", "uvicorn")


def loaded_after(code: str) -> set[str]:
    script = (f"import sys\n{code}\nimport json\n"
              f"print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    result = run_python("-c", script)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_import_bus_core_loads_no_heavy_library() -> None:
    assert loaded_after("import bus_core").isdisjoint(HEAVY)


def test_bus_help_loads_every_plugin_but_no_heavy_library() -> None:
    code = ("import contextlib, io\nfrom bus_core.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, "
            "contextlib.suppress(SystemExit):\n"
            "    main(['--help'])\n"
            "assert 'dead-letters' in out.getvalue() and 'web' in out.getvalue(), out.getvalue()")
    loaded = loaded_after(code)
    assert {"bus_redis", "bus_web", "bus_schema"} <= loaded  # the plugins were loaded ...
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))  # ... and stayed light


def test_a_redis_transport_still_loads_when_first_used() -> None:
    assert "redis" in loaded_after("from bus_redis import RedisEventTransport")
    assert sys.executable  # the child ran in this environment
