"""Run every benchmark in bench/ (each `*_bench.py`), one after another, each in a fresh
process so one's threads, loops and garbage do not colour the next one's figures.

    python3 dev.py bench                  # all of them (what this file is for)
    python bench/run.py --quick           # small counts, a few seconds each
    python bench/run.py memory            # only bench/memory_bench.py

Benchmarks print tables; they assert nothing. The exit code is 1 when a benchmark crashed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    """The benchmarks, by short name: bench/memory_bench.py is `memory`."""
    return {path.stem.removesuffix("_bench"): path for path in sorted(HERE.glob("*_bench.py"))}


def main(argv: list[str] | None = None) -> int:
    found = discover()
    parser = argparse.ArgumentParser(description="Run Bus's benchmarks.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(found)})")
    parser.add_argument("--quick", action="store_true",
                        help="small counts for a fast, rough run")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in found]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(found)}")
    chosen = args.names or list(found)
    failed = []
    for number, name in enumerate(chosen):
        if number:
            print(flush=True)
        print(f"== {name} ({found[name].relative_to(HERE.parent)}) ==", flush=True)
        started = time.perf_counter()
        command = [sys.executable, str(found[name]), *(["--quick"] if args.quick else [])]
        code = subprocess.call(command, cwd=HERE.parent)
        if code != 0:
            failed.append(name)
            print(f"== {name} failed with exit code {code} after "
                  f"{time.perf_counter() - started:.1f}s ==", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
