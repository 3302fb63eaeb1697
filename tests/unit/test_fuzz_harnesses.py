"""The short CI run of every atheris harness in fuzz/ (reliability.md §5.4, recipe C).

Each harness runs a few thousand libFuzzer iterations from its seeds in a subprocess; a
crash (an input a parser answered with anything but its documented error) makes
libFuzzer exit non-zero and leaves the input in the test's temporary directory. atheris
ships manylinux wheels (the `dev` extra installs it on Linux); on other platforms the
harness's plain-Python mode runs the same target with the seeded mutator instead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
RUNS = 2000
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


def test_every_target_has_a_harness_file():
    assert sorted(p.stem.removeprefix("fuzz_") for p in (REPO / "fuzz").glob("fuzz_*.py")) \
        == sorted(TARGETS)


def test_atheris_is_installed_where_it_has_wheels():
    if sys.platform == "linux":
        assert HAVE_ATHERIS, "the dev extra installs atheris on Linux: pip install -e '.[dev]'"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_short_run_finds_no_crash(name, tmp_path):
    if HAVE_ATHERIS:
        args = [str(tmp_path / "corpus"), f"-atheris_runs={RUNS}", "-seed=1",
                f"-artifact_prefix={tmp_path}/"]
    else:
        args = ["--plain", "--runs", str(RUNS), "--seed", "1", "--artifacts", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-m", f"fuzz.fuzz_{name}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("crash-"))
    assert not crashes, f"fuzz_{name} found a crash ({crashes}):\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, proc.stderr[-4000:]
