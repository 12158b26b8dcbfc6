"""Watch the hello plugin's hooks run: serve a tiny API, call it, stop.

    pip install ./examples/plugin-hello
    python examples/plugin-hello/demo.py                  # uses bus.yaml next to this file
    python examples/plugin-hello/demo.py -c other.yaml    # or any config

With `plugins.hello.enabled: false` (or no `hello` section) the same run prints no hello lines:
discovery is not enablement.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import bus_core
from bus_core import Api


class MathsApi(Api):
    """Something for the worker to serve."""

    class Meta:
        name = "maths"

    def add(self, a: int, b: int) -> int:
        return a + b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=str(Path(__file__).with_name("bus.yaml")),
                        help="config file (default: bus.yaml next to this script)")
    parser.add_argument("-n", "--calls", type=int, default=3, help="how many RPCs to make")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(levelname)-7s %(name)s: %(message)s")

    bus = bus_core.create(args.config, service_name="hello_demo")
    bus.client.register_api(MathsApi())
    bus.client.start_worker()  # worker_started hooks run before this returns
    try:
        for i in range(args.calls):
            print(f"[demo] maths.add(a={i}, b=1) -> {bus.maths.add(a=i, b=1)}", flush=True)
    finally:
        bus.client.close()  # stops the worker: worker_stopping hooks run here
    return 0


if __name__ == "__main__":
    sys.exit(main())
