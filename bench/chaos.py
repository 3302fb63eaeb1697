"""`make chaos`: the long crash suite (reliability.md §5.2, recipe A) on SQLite and on
PostgreSQL, written into bench/RESULTS.md between its own markers.

    .venv/bin/python bench/chaos.py --cycles 500            # both databases
    .venv/bin/python bench/chaos.py --cycles 60 --db sqlite --no-write
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import ChaosReport, run_chaos  # noqa: E402
from tests.peers.postgres import PostgresCluster  # noqa: E402

BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"


def section(command: str, reports: list[ChaosReport]) -> str:
    lines = [BEGIN, "## Crash suite (recipe A): kill -9 cycles", "",
             f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M')}, this machine.", "",
             "| database | cycles | kills | messages (acked) | effects | lost | duplicate "
             "effects | unexpected | order breaks | duplicate requests | recovered | "
             "journal | duration |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        v = r.verdict
        lines.append(
            f"| {r.database} | {r.cycles} | {sum(r.kills.values())} | {v.messages} "
            f"({v.acked}) | {v.effects} | {len(v.lost)} | {len(v.duplicate_effects)} | "
            f"{len(v.unexpected)} | {len(v.order_violations)} | {v.duplicate_requests} | "
            f"{v.recovered} | {', '.join(f'{k} {n}' for k, n in sorted(r.journal.items()))} "
            f"| {r.seconds:.0f} s |")
    lines += ["", "Kills per point (`point@process`; a stage child is a processing or "
              "dispatch child of serve):", ""]
    for r in reports:
        kills = ", ".join(f"{k} {n}" for k, n in sorted(r.kills.items()))
        missed = ", ".join(f"{k} {n}" for k, n in sorted(r.not_reached.items())) or "none"
        lines.append(f"- {r.database}: {kills}; armed points not reached in time: {missed}")
    lines += ["", "Verdict: " + ("PASS" if all(r.ok for r in reports) else "FAIL")
              + " (lost, duplicate effects, unexpected and order breaks must be 0; "
              "duplicate requests and recovered are reported, not failures).", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--db", choices=["both", "sqlite", "postgresql"], default="both")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    reports = []
    with tempfile.TemporaryDirectory(prefix="tryggbro-chaos-") as tmp:
        if args.db in ("both", "sqlite"):
            reports.append(run_chaos(Path(tmp) / "sqlite", args.cycles, seed=args.seed,
                                     patients=args.patients))
        if args.db in ("both", "postgresql"):
            with PostgresCluster() as pg:
                url = pg.create_database("chaos")
                reports.append(run_chaos(Path(tmp) / "pg", args.cycles, db_url=url,
                                         seed=args.seed + 1, patients=args.patients))
    command = "python bench/chaos.py " + shlex.join(sys.argv[1:])
    text = section(command.strip(), reports)
    print(text)
    if not args.no_write:
        write_section(args.results, text)
    print(json.dumps([r.as_dict() for r in reports], indent=1))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
