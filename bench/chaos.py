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

HEADING = "## Crash suite (recipe A): kill -9 cycles"
RULES = ("A run passes when lost, duplicate effects, unexpected and order breaks are all 0; "
         "duplicate requests and recovered are reported, not failures. Each database's "
         "rows are written by its own run (`--db sqlite` / `--db postgresql` / `both`).")


def markers(database: str) -> tuple[str, str]:
    return f"<!-- chaos:{database}:begin -->", f"<!-- chaos:{database}:end -->"


def section(command: str, r: ChaosReport) -> str:
    """One database's block: its table row, kills per point and verdict."""
    begin, end = markers(r.database)
    v = r.verdict
    kills = ", ".join(f"{k} {n}" for k, n in sorted(r.kills.items()))
    missed = ", ".join(f"{k} {n}" for k, n in sorted(r.not_reached.items())) or "none"
    lines = [begin, f"### {r.database}", "",
             f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M')}, this machine.", "",
             "| cycles | kills | messages (acked) | effects | lost | duplicate effects | "
             "unexpected | order breaks | duplicate requests | recovered | journal | "
             "duration |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {r.cycles} | {sum(r.kills.values())} | {v.messages} ({v.acked}) | "
             f"{v.effects} | {len(v.lost)} | {len(v.duplicate_effects)} | "
             f"{len(v.unexpected)} | {len(v.order_violations)} | {v.duplicate_requests} | "
             f"{v.recovered} | {', '.join(f'{k} {n}' for k, n in sorted(r.journal.items()))} "
             f"| {r.seconds:.0f} s |", "",
             f"Kills per point (`point@process`; a stage child is a processing or dispatch "
             f"child of serve): {kills}. Armed points not reached in time (then killed at "
             f"random): {missed}.", "",
             f"Verdict: {'PASS' if r.ok else 'FAIL'}.", end]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str, database: str) -> None:
    """Replace this database's block; create the heading the first time."""
    begin, end = markers(database)
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1].lstrip("\n")
    elif HEADING in old:
        # after the last block of another database, else after the heading's rules
        head, rest = old.split(HEADING, 1)
        ends = [rest.rfind(markers(db)[1]) for db in ("sqlite", "postgresql")]
        at = max(ends)
        if at >= 0:
            at = rest.index("\n", at) + 1
        else:
            at = rest.index(RULES) + len(RULES) + 1 if RULES in rest else rest.index("\n") + 1
        new = head + HEADING + rest[:at] + "\n" + text + rest[at:]
    else:
        new = old.rstrip("\n") + "\n\n" + HEADING + "\n\n" + RULES + "\n\n" + text
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--db", choices=["both", "sqlite", "postgresql"], default="both")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="per database: start no new cycle after this long; the "
                        "results give the cycles actually run")
    args = parser.parse_args()
    limit = args.max_minutes * 60 if args.max_minutes else None
    reports = []
    with tempfile.TemporaryDirectory(prefix="tryggbro-chaos-") as tmp:
        if args.db in ("both", "sqlite"):
            reports.append(run_chaos(Path(tmp) / "sqlite", args.cycles, seed=args.seed,
                                     patients=args.patients, max_seconds=limit))
        if args.db in ("both", "postgresql"):
            with PostgresCluster() as pg:
                url = pg.create_database("chaos")
                reports.append(run_chaos(Path(tmp) / "pg", args.cycles, db_url=url,
                                         seed=args.seed + 1, patients=args.patients,
                                         max_seconds=limit))
    command = "python bench/chaos.py " + shlex.join(sys.argv[1:])
    for report in reports:
        text = section(command.strip(), report)
        print(text)
        if not args.no_write:
            write_section(args.results, text, report.database)
    print(json.dumps([r.as_dict() for r in reports], indent=1))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
