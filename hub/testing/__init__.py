"""Test helpers for plugin authors; the pytest fixtures live in `hub.testing.plugin`.

A vendor plugin's test suite gets, with nothing but `pip install tryggbro`:

- ``tryggbro_replay(path)``: replay a fixture folder through the real pipeline and fail
  with a readable diff if the output differs from the golden files;
- ``tryggbro_hub(toml)``: a real hub on a temporary SQLite database, plugins loaded;
- ``tryggbro_client(hub)``: an HTTP client talking to that hub's API in-process.
"""

from __future__ import annotations

from hub.testing.plugin import ReplayFailed

__all__ = ["ReplayFailed"]
