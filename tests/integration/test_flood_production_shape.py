"""Recipe C "Flood" (docs: reliability.md §5.4), short: `bench/flood.py` for 15 s.

A real `tryggbro serve` (stage processes on) with HTTP, MLLP, SOS Access and SIA DC-09
listeners takes malformed inputs at a target of 1,000/s in total while valid messages
arrive once a second on each listener (`make bench-flood` runs the same for 5 minutes).
Asserted: the bars of the recipe — serve alive and no stage restarted, no error or
exception in its log, RSS of the process tree grew < 50 MB after warm-up, every malformed
input answered negatively or its connection closed, every valid message acknowledged and
journaled exactly once, every valid alarm delivered exactly once with p99 ≤ 5 s.
The senders run in their own process (bench/flood.py), niced like the stage children.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.flood import ROOT, Result

pytestmark = [pytest.mark.slow]


def test_flood_on_every_listener_of_a_real_serve(tmp_path):
    out = tmp_path / "flood.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "flood.py"), "--seconds", "15",
                          "--rate", "1000", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = Result(**json.loads(out.read_text()))
    print(f"\nflood (15 s): {result.malformed} malformed ({result.malformed_per_second:.0f}/s), "
          f"alarm p50/p99 {result.alarm_p50:.2f}/{result.alarm_p99:.2f} s "
          f"(steps {result.stage_seconds}), RSS {result.rss_start_mb:.0f} → "
          f"{result.rss_end_mb:.0f} MB, valid {result.valid_sent}, outcomes {result.outcomes}")
    assert result.malformed >= 3_000  # the flood really happened
    assert result.problems() == []
    assert run.returncode == 0
