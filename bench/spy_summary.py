"""Summarise py-spy `--format raw` (collapsed stacks) into self and inclusive time per
function: `python bench/spy_summary.py bench/out/dispatch-*.txt [--top 40]`."""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in args.file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1]
                  + ")" for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    print(f"{samples} samples")
    print("\nself:")
    for f, n in own.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {f}")
    print("\ninclusive:")
    for f, n in total.most_common(args.top):
        print(f"{100 * n / samples:5.1f}%  {f}")


if __name__ == "__main__":
    main()
