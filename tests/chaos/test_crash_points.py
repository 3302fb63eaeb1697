"""The `mid_group_commit` crash point: a SIGKILL between intake's inserts and its
commit (in the journal writer intake really uses: SQLite's own writer, PostgreSQL's
multi-row insert) leaves nothing of the batch in the journal (nobody was acknowledged, so every
sender resends), and the journal takes the batch again afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hub.store.db import open_database, upgrade

ROOT = Path(__file__).resolve().parents[2]
INSERT = """
import sys
from datetime import UTC, datetime
from hub.domain.model import RawMessage
from hub.store.db import open_database
from hub.store.journal import open_journal_writer
from hub.store.repository import Repository
writer = open_journal_writer(Repository(open_database(sys.argv[1])))
now = datetime.now(UTC)
results = writer.insert([RawMessage("alarms", f"k{i}", "application/json", b"{}", now)
                         for i in range(3)])
print(sorted(r.duplicate for r in results))
writer.close()
"""


def insert(url: str, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRYGGBRO_CRASH_AT"}
    if crash_at:
        env["TRYGGBRO_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-c", INSERT, url], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60, check=False)


def journal_keys(url: str) -> list[str]:
    from sqlalchemy import text

    db = open_database(url)
    with db.engine.connect() as conn:
        keys = [r[0] for r in conn.execute(text("SELECT dedup_key FROM journal ORDER BY 1"))]
    db.dispose()
    return keys


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def test_kill_inside_a_group_commit_keeps_nothing_of_the_batch(tmp_path, database, request):
    url = (f"sqlite:///{tmp_path}/hub.db" if database == "sqlite"
           else request.getfixturevalue("pg_url"))
    db = open_database(url)
    upgrade(db)
    db.dispose()
    crashed = insert(url, "mid_group_commit:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert journal_keys(url) == []
    again = insert(url, None)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "[False, False, False]"  # new, not duplicates
    assert journal_keys(url) == ["k0", "k1", "k2"]
