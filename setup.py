"""bus-core's one build-time decision: where its `bus-memory` dependency comes from.

Everything else about the distribution is in pyproject.toml. bus-core depends on bus-memory
(the in-memory transport, the default of a config that names none), which is its own
distribution in `transports_memory/`:

- built from a checkout (`pip install .`, `pip wheel .`), the requirement is a direct
  reference to that folder, `bus-memory @ file:///.../transports_memory`, so a bare
  `pip install .` installs both from the checkout, with no package index;
- built from an sdist (what a package index gets; the sdist holds no `transports_memory/`),
  it is `bus-memory>=0.1.0`, found by name;
- `BUS_MEMORY_REQUIREMENT` overrides both (dev.py sets it to `bus-memory`, because it installs
  `transports_memory/` editable in the same pip command, which a direct reference would
  conflict with; a release build that must not carry a file URL sets `bus-memory>=0.1.0`).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
MEMORY = HERE / "transports_memory"
BASE = ["pluggy>=1.3", "PyYAML>=6.0", "jsonschema>=4.18",
        "croniter>=2.0"]  # croniter: cron expressions for @bus.client.schedule(...)


def memory_requirement() -> str:
    """The requirement on bus-memory, as explained above."""
    chosen = os.environ.get("BUS_MEMORY_REQUIREMENT", "").strip()
    if chosen:
        return chosen
    if (MEMORY / "pyproject.toml").is_file():
        return f"bus-memory @ {MEMORY.as_uri()}"
    return "bus-memory>=0.1.0"


setup(install_requires=[*BASE, memory_requirement()])
