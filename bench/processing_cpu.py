"""CPU per event of the processing stage alone, in-process (load-independent).

A fresh SQLite database gets N alarm webhooks (the `make bench` load: `alarm.raised` with
one `reported` step, 50 enrolled devices) journaled in one go; then the processor runs
batches until the journal is empty. CPU = `time.process_time()` around the processing
loop only, so other load on the machine does not count. `--profile out.prof` writes a
cProfile of the loop.

Usage: .venv/bin/python bench/processing_cpu.py [--events 3000] [--runs 3] [--profile F]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hub.domain.model import RawMessage  # noqa: E402
from hub.logging import configure_logging  # noqa: E402
from tests.integration.helpers import (  # noqa: E402
    ENV,
    alarm_event,
    body,
    build_hub,
    enrolment_request,
    unique_patient,
)

DEVICES = 50


def one_run(events: int, profile: str | None) -> float:
    os.environ.update(ENV)
    with tempfile.TemporaryDirectory() as logdir, open(Path(logdir) / "log", "w") as log:
        configure_logging("info", stream=log)  # as serve runs it: JSON lines to a file
        return _measure(events, profile)


def _measure(events: int, profile: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        hub = build_hub(Path(tmp), f"sqlite:///{tmp}/hub.db",
                        {"ehr": {"type": "fhir-rest", "base_url": "http://127.0.0.1:9/fhir"}})
        try:
            hub.repo.enrol([enrolment_request(f"BENCH-{i}", unique_patient())
                            for i in range(DEVICES)])
            now = datetime.now(UTC)
            raws = [RawMessage("alarmplatform", f"e-{i}", "application/json",
                               body(alarm_event(f"e-{i}", f"A-{i}", f"BENCH-{i % DEVICES}")),
                               now) for i in range(events)]
            for i in range(0, events, 500):
                hub.repo.insert_messages(raws[i:i + 500])
            processor = hub.processor()
            processor.run_batch()  # warm-up: validators built, caches filled
            profiler = cProfile.Profile() if profile else None
            t0 = time.process_time()
            if profiler:
                profiler.enable()
            done = 0
            while True:
                n, _ = processor.run_batch()
                if n == 0:
                    break
                done += n
            if profiler and profile:
                profiler.disable()
                profiler.dump_stats(profile)
            cpu = time.process_time() - t0
            status = hub.repo.status()
            print(f"  processed {done} messages, status {status.messages}", file=sys.stderr)
            return cpu / done * 1000
        finally:
            hub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args()
    results = [one_run(args.events, args.profile) for _ in range(args.runs)]
    print(f"processing CPU per event, ms: median {statistics.median(results):.3f} "
          f"(runs {', '.join(f'{r:.3f}' for r in results)})")


if __name__ == "__main__":
    main()
