"""Start-up benchmark: how long `import bus_core` and `bus --help` take, beside a bare
`python -c pass` measured in the same run (the interpreter's own start-up).

Each command runs in a fresh process, alternating with the others, and each figure is the
median of its runs. Targets (issue #13): `import bus_core` <= 150 ms, `bus --help` <= 250 ms,
both wall-clock including the interpreter's start.

    python bench/startup_bench.py            # 15 runs of each
    python bench/startup_bench.py --quick    # 5 runs of each
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from tables import format_table

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import bus_core": [sys.executable, "-c", "import bus_core"],
    "bus --help": [sys.executable, "-m", "bus_core.cli", "--help"],
}
TARGETS_MS = {"import bus_core": 150, "bus --help": 250}


def time_once(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start-up times of Bus.")
    parser.add_argument("--quick", action="store_true", help="5 runs of each, not 15")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else 15
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # warm the file cache
        time_once(command)
    for _ in range(runs):
        for name, command in COMMANDS.items():
            times[name].append(time_once(command))
    base = statistics.median(times["python -c pass"])
    body = []
    for name in COMMANDS:
        median = statistics.median(times[name])
        target = TARGETS_MS.get(name)
        body.append((name, f"{median * 1000:.0f} ms", f"{(median - base) * 1000:.0f} ms",
                     f"<= {target} ms" if target else "",
                     ("ok" if median * 1000 <= target else "MISS") if target else ""))
    print(f"startup_bench{' --quick' if args.quick else ''}: Python "
          f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s); "
          f"median of {runs} fresh process(es) each, alternating\n")
    print("\n".join(format_table(("command", "wall", "above python -c pass", "target", ""),
                                 body)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
