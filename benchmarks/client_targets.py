"""Benchmark: does the load generator meet its accuracy targets on this machine?

Targets (issue 3): at 128 concurrent streams of 10 ms inter-token delay, TTFT error p50 <= 1 ms and
p99 <= 3 ms; at 1,000 req/s open loop, schedule lag p99 <= 5 ms. Error is measured against the mock
server's own send times (see harness/calibrate.py). Prints each figure and its ratio to the target
(<= 1.0 meets it), for 1 and for N client processes.

    python benchmarks/client_targets.py [--client-processes 2] [--repeats 3]
"""
from __future__ import annotations

import argparse

from harness.calibrate import Level, calibrate

TARGETS = (  # (level, measure, statistic, target ms)
    (Level("closed", 128, requests=1024, output_tokens=50), "ttft_error_ms", "p50", 1.0),
    (Level("closed", 128, requests=1024, output_tokens=50), "ttft_error_ms", "p99", 3.0),
    (Level("open", 1000, requests=3000, output_tokens=4), "schedule_lag_ms", "p99", 5.0),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    levels = tuple(dict.fromkeys(level for level, *_ in TARGETS))
    for processes in sorted({1, args.client_processes}):
        for repeat in range(args.repeats):
            rows = {(r["mode"], r["load"]): r for r in calibrate(levels, client_processes=processes)["levels"]}
            for level, measure, stat, target in TARGETS:
                value = rows[(level.mode, level.load)][measure][stat]
                print(f"processes={processes} run={repeat + 1} {level.label:>12} {measure} {stat} = {value:7.3f} ms"
                      f"  target <= {target:g} ms  ratio {value / target:5.2f}", flush=True)


if __name__ == "__main__":
    main()
