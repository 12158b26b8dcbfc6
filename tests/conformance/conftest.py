"""The example transport (examples/sqlite_transport) is imported from its folder, as its
demo does, without installing it."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlite_transport"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))
