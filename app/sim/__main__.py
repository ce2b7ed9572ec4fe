"""``python -m app.sim --listen HOST:PORT [--scenario NAME|FILE] [--seed N]``: the simulator on its own.

The same as ``controlroom sim``; it prints one line with the URL when it is ready, then serves until
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from app.sim.scenario import ScenarioError, load_scenario
from app.sim.server import SimServer, run_simulator


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8790"`` -> ("127.0.0.1", 8790); ``"[::1]:0"`` works too."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--listen expects HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="controlroom sim", description="Run the simulated LLM provider.")
    parser.add_argument(
        "--listen", type=parse_listen, default=("127.0.0.1", 8790), help="HOST:PORT [127.0.0.1:8790]"
    )
    parser.add_argument(
        "--scenario", default="healthy", help="a shipped scenario name or a YAML file [healthy]"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same run [0]"
    )
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"controlroom sim: {exc}", file=sys.stderr)
        return 2
    host, port = args.listen

    def ready(server: SimServer) -> None:
        print(
            f"controlroom sim: scenario {scenario.name!r} on {server.base_url} (seed {args.seed})", flush=True
        )

    try:
        asyncio.run(run_simulator(host, port, scenario, args.seed, on_ready=ready))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"controlroom sim: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
