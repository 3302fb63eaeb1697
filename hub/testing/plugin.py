"""pytest plugin (entry point `pytest11`): fixtures to test Tryggbro plugins for real."""

from __future__ import annotations

import textwrap
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.config import config_from_dict
from hub.plugins import PluginHost
from hub.replay import ReplayReport, replay_path


class ReplayFailed(AssertionError):
    """The replayed output differs from the golden files (the message holds the diff)."""


@pytest.fixture
def tryggbro_plugins() -> PluginHost:
    """A plugin manager with every installed plugin loaded, as the gateway would have it."""
    host = PluginHost()
    host.load_entry_points()
    return host


@pytest.fixture
def tryggbro_replay(tryggbro_plugins: PluginHost) -> Callable[[Path], ReplayReport]:
    """``tryggbro_replay(path)`` replays fixtures and raises ReplayFailed on a difference."""

    def run(path: Path) -> ReplayReport:
        report = replay_path(Path(path), plugins=tryggbro_plugins)
        if not report.ok:
            raise ReplayFailed(report.format())
        return report

    return run


@pytest.fixture
def tryggbro_hub(tmp_path: Path, tryggbro_plugins: PluginHost) -> Iterator[Callable[..., Any]]:
    """``tryggbro_hub(toml, mappings_dir=...)`` builds a hub on a temporary SQLite file.

    The TOML is a full configuration; its database URL is replaced by a file under
    tmp_path, and relative paths resolve against tmp_path.
    """
    from hub.runtime import Hub

    hubs: list[Hub] = []

    def build(toml: str, **overrides: Any) -> Hub:
        data = tomllib.loads(textwrap.dedent(toml))
        data.setdefault("database", {})["url"] = f"sqlite:///{tmp_path}/hub.db"
        for key, value in overrides.items():
            data.setdefault("hub", {})[key] = str(value)
        config = config_from_dict(data, tmp_path / "tryggbro.toml")
        hub = Hub.build(config, plugins=tryggbro_plugins)
        hubs.append(hub)
        return hub

    yield build
    for hub in hubs:
        hub.close()


@pytest.fixture
async def tryggbro_client() -> AsyncIterator[Callable[[Any], Any]]:
    """``client = tryggbro_client(hub)``: an httpx client on the hub's ASGI app.

    Intake runs (group commit) while the client is open; processing and dispatch do not,
    so a test decides when they run (``hub.processor().run_batch()``).
    """
    from hub.api.app import create_app
    from hub.httpclient import asgi_client

    opened: list[tuple[Any, Any]] = []

    def make(hub: Any) -> Any:
        hub.intake.start()
        client = asgi_client(create_app(hub))
        opened.append((hub, client))
        return client

    yield make
    for hub, client in opened:
        await client.aclose()
        hub.intake.stop()
