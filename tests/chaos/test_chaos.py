"""Crash suite, short version (reliability.md §5.2, recipe A): mixed traffic, `kill -9` at
random moments and at named crash points, on SQLite and on PostgreSQL (serve + two
workers). `make chaos` runs the long version (bench/chaos.py)."""

from __future__ import annotations

import json

import pytest

from tests.chaos.harness import run_chaos

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def _assert_clean(report) -> None:
    summary = json.dumps(report.as_dict(), indent=1)
    assert report.verdict.lost == [], summary
    assert report.verdict.duplicate_effects == [], summary
    assert report.verdict.unexpected == [], summary
    assert report.verdict.order_violations == [], summary
    assert set(report.journal) <= {"processed", "pending"}, summary
    assert report.senders["refused"] == [], summary
    assert report.verdict.acked > 50, summary
    assert sum(report.kills.values()) >= report.cycles, summary


def test_sqlite_kill_cycles_lose_duplicate_and_reorder_nothing(tmp_path):
    report = run_chaos(tmp_path, cycles=20, seed=5, drain_seconds=180)
    _assert_clean(report)
    points = {k.split("@")[0] for k in report.kills}
    assert len(points) >= 3, report.kills  # random kills and several named points fired


@pytest.mark.pg
def test_postgresql_serve_and_two_workers_killed_lose_nothing(tmp_path, pg_url):
    report = run_chaos(tmp_path, cycles=8, db_url=pg_url, seed=6, patients=6,
                       drain_seconds=180)
    _assert_clean(report)
