"""atheris target `mllp`.

The parser and its oracle: fuzz/targets.py. How to run it: fuzz/README.md.
"""

from fuzz.harness import main

if __name__ == "__main__":
    main("mllp")
