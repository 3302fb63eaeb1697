"""Benchmark: does a flapping destination delay a healthy one beside it?

The scenario of `tests/integration/test_outage_recipe_b.py` (recipe B, "a flapping
destination does not delay other destinations"), run several times and measured rather
than bounded: one hub (SQLite, HTTP intake at 20 events/s for 3 s, the compressed retry
clock of that test) delivers every event to a healthy FHIR receiver, first alone, then
beside a second destination behind a fault proxy that cycles every 0.5 s through
blackhole, refused, reset and HTTP 503. The figure is the healthy destination's latency,
acknowledgement to receipt, p99 and median per run, and the median over the runs.

Compare with another checkout by running that tree's copy of this file (each run imports
the `hub` of the tree the script is in).

Usage: .venv/bin/python bench/flapping.py [--runs 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import medians, save_runs  # noqa: E402
from hub.logging import configure_logging  # noqa: E402
from tests.integration.helpers import ENV  # noqa: E402
from tests.integration.test_outage_recipe_b import healthy_latency, p99  # noqa: E402


async def one_run(directory: Path) -> dict[str, float]:
    alone, _ = await healthy_latency(directory / "alone", flapping=False)
    beside, modes = await healthy_latency(directory / "beside", flapping=True)
    if len(modes) < 4:
        raise RuntimeError(f"the other destination flapped through too few faults: {modes}")
    return {"alone_p99_ms": p99(alone) * 1000, "beside_p99_ms": p99(beside) * 1000,
            "alone_median_ms": statistics.median(alone) * 1000,
            "beside_median_ms": statistics.median(beside) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    os.environ.update(ENV)  # the test configuration's source key and admin tokens
    configure_logging("error", stream=sys.stderr)  # the flapping one's retries are expected
    runs = []
    with tempfile.TemporaryDirectory(prefix="tryggbro-flapping-") as tmp:
        for i in range(args.runs):
            run = asyncio.run(one_run(Path(tmp) / str(i)))
            runs.append(run)
            print("run", i + 1, " ".join(f"{k} {v:.0f}" for k, v in run.items()), flush=True)
    summary = medians(runs)
    print("median of", args.runs, "runs:", " ".join(f"{k} {v:.0f}" for k, v in summary.items()))
    print("saved", save_runs("flapping", {"runs": runs, "median": summary}))


if __name__ == "__main__":
    main()
