"""Fuzz targets for every parser of untrusted input (reliability.md §5.4, recipe C).

`fuzz.targets` holds the targets and their oracles, shared by the Hypothesis property
tests (tests/unit/test_parser_properties.py) and the atheris harnesses (fuzz/fuzz_*.py).
"""
