"""Start-up time of `fer plugins` with every installed plugin, against `python -c pass` (issue 2).

Listing plugins must feel instant: it imports the hook modules only, never torch. This
runs each command ``--repeat`` times, interleaved so that both see the same machine
load, after one warm-up run each, and prints the median wall times side by side and
the difference, which should stay within 0.3 s.

    python benchmarks/cli_startup.py               # 20 runs of each
    python benchmarks/cli_startup.py --repeat 50
    python -X importtime -m fer_core plugins 2>&1 >/dev/null | sort -t'|' -k2 -n | tail   # where the time goes
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 0.3


def fer() -> list[str]:
    """The installed `fer` script of this interpreter's environment (or `python -m fer_core`)."""
    script = Path(sys.executable).with_name("fer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fer_core"]


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs of each command")
    args = parser.parse_args()

    listing = json.loads(subprocess.run([*fer(), "plugins", "--json"], check=True, capture_output=True,
                                        text=True).stdout)
    loaded = [f"{p['name']} ({len(p['components'])})" for p in listing if p["status"] == "loaded"]
    others = [f"{p['name']}: {p['status']}" for p in listing if p["status"] != "loaded"]
    print(f"plugins loaded: {', '.join(loaded)}" + (f"; not loaded: {', '.join(others)}" if others else ""))

    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "fer plugins": [*fer(), "plugins"],
        "fer plugins --json": [*fer(), "plugins", "--json"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():
        wall_time(command)  # warm the page cache
    for _ in range(args.repeat):
        for name, command in commands.items():
            times[name].append(wall_time(command))

    baseline = statistics.median(times["python -c pass"])
    print(f"{'command':<22}{'median':>10}{'min':>10}{'max':>10}{'- python':>11}")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:<22}{median:>9.3f}s{min(runs):>9.3f}s{max(runs):>9.3f}s{median - baseline:>+10.3f}s")
    difference = statistics.median(times["fer plugins"]) - baseline
    verdict = "within" if difference <= BUDGET_S else "OVER"
    print(f"fer plugins - python -c pass = {difference:.3f} s ({verdict} the {BUDGET_S} s budget, "
          f"median of {args.repeat} runs)")


if __name__ == "__main__":
    main()
