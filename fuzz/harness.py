"""Run one `fuzz.targets` target under atheris (libFuzzer), or under plain Python.

    python -m fuzz.fuzz_hl7_wire -atheris_runs=5000          # atheris, seeds from fixtures
    python -m fuzz.fuzz_hl7_wire CORPUS_DIR -max_total_time=3600
    python -m fuzz.fuzz_hl7_wire --plain --runs 20000 --seed 7

atheris mode passes every other argument to libFuzzer. The target's seeds (the replay
fixtures' inputs and tests/corpus/regressions/<target>) are written into the first corpus
directory when it is empty or missing; without one, a new temporary directory is used.
Only the hub's and the plugins' modules are instrumented for coverage.

Plain mode (no atheris: a platform without its wheels) draws inputs from the seeded
mutator `fuzz.targets.random_inputs`; a crash writes the input to
`<artifact dir>/crash-<target>-<sha256 prefix>` and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import traceback
from pathlib import Path

INSTRUMENT = ["hub", "tryggbro_alarmplatform", "tryggbro_dho", "tryggbro_dispenser",
              "tryggbro_doorlock", "tryggbro_location", "tryggbro_nursecall",
              "tryggbro_siadc09", "tryggbro_sosaccess", "tryggbro_supervision"]


def main(name: str) -> None:
    argv = sys.argv[1:]
    if "--plain" in argv:
        sys.exit(run_plain(name, argv))
    run_atheris(name, argv)


def run_atheris(name: str, argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENT):
        from fuzz import targets

        target = targets.TARGETS[name]
        seeds = targets.seeds(name)
        for data in seeds:  # imports every parser module while instrumenting
            target.check(data)
    args = [sys.argv[0], *argv]
    dirs = [Path(a) for a in argv if not a.startswith("-")]
    if not dirs:
        dirs = [Path(tempfile.mkdtemp(prefix=f"tryggbro-fuzz-{name}-"))]
        args.append(str(dirs[0]))
    corpus = dirs[0]
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, data in enumerate(seeds):
            (corpus / f"seed-{i:03d}").write_bytes(data)
    atheris.Setup(args, target.check)
    atheris.Fuzz()


def run_plain(name: str, argv: list[str]) -> int:
    from fuzz import targets

    parser = argparse.ArgumentParser(prog=f"fuzz_{name}")
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--artifacts", type=Path, default=Path())
    opts = parser.parse_args(argv)
    target = targets.TARGETS[name]
    inputs = targets.random_inputs(name, random.Random(opts.seed))  # noqa: S311 (not crypto)
    for run in range(opts.runs):
        data = next(inputs)
        try:
            target.check(data)
        except Exception:
            digest = hashlib.sha256(data).hexdigest()[:12]
            path = opts.artifacts / f"crash-{name}-{digest}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"run {run}: crash; input written to {path}", file=sys.stderr)
            return 1
    print(f"{name}: {opts.runs} runs, no crash (seed {opts.seed})")
    return 0
