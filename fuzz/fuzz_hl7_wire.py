"""atheris target `hl7_wire`.

The parser and its oracle: fuzz/targets.py. How to run it: fuzz/README.md.
"""

from fuzz.harness import main

if __name__ == "__main__":
    main("hl7_wire")
