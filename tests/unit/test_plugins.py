"""Plugin manager: one discovery path, switches, clear failures; every hook documented."""

import inspect
import re
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from hub import hookspecs
from hub.errors import ConfigError
from hub.plugins import BLOCK_ENV, LOAD_ENV, PluginHost

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BUILTINS = {"vkp-mapping", "config-routing", "device-registry", "http-ingest", "fhir-rest",
            "folder"}


def hook_names():
    return sorted(n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction)
                  if n.startswith("hub_"))


def test_every_hookspec_is_documented_with_its_arguments():
    text = DOCS.read_text()
    headings = set(re.findall(r"^## (hub_\w+)$", text, re.M))
    assert headings == set(hook_names()), "docs/plugins.md headings differ from hookspecs"
    for name in hook_names():
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        params = inspect.signature(getattr(hookspecs, name)).parameters
        for param in params:
            assert f"{param}:" in section.split("```")[1], f"{name}: {param} not in signature"
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


def test_builtins_load_through_entry_points_with_versions():
    host = PluginHost()
    host.load_entry_points()
    infos = {p.name: p for p in host.plugins()}
    assert set(infos) >= BUILTINS
    for name in BUILTINS:
        assert infos[name].builtin
        assert infos[name].distribution == "tryggbro"
        assert infos[name].version
        assert infos[name].hooks
    assert infos["alarmplatform"].distribution == "tryggbro-alarmplatform"
    assert infos["alarmplatform"].hooks == ("hub_register_adapters",)


def test_load_only_named_third_party_plugins(monkeypatch):
    monkeypatch.setenv(LOAD_ENV, "")
    host = PluginHost()
    host.load_entry_points()
    names = {p.name for p in host.plugins()}
    assert "alarmplatform" not in names
    assert names >= BUILTINS
    monkeypatch.setenv(LOAD_ENV, "alarmplatform")
    host = PluginHost()
    host.load_entry_points()
    assert "alarmplatform" in {p.name for p in host.plugins()}


def test_block_a_plugin_even_a_builtin(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "folder,alarmplatform")
    host = PluginHost()
    host.load_entry_points()
    names = {p.name for p in host.plugins()}
    assert "folder" not in names
    assert "alarmplatform" not in names
    assert "fhir-rest" in names


def ep(name, value):
    return EntryPoint(name=name, value=value, group="tryggbro")


def test_duplicate_entry_point_names_are_refused():
    host = PluginHost()
    with pytest.raises(ConfigError, match="plugin name 'sample' is declared by both"):
        host.load_entry_points([ep("sample", "tests.unit.sample_plugin"),
                                ep("sample", "tests.unit.sample_plugin")])


def test_import_failure_names_the_plugin():
    host = PluginHost()
    with pytest.raises(ConfigError, match=r"plugin 'broken' .* failed to import: "
                                          r"ImportError: vendor SDK missing"):
        host.load_entry_points([ep("broken", "tests.unit.broken_plugin")])


def test_unknown_hook_in_a_plugin_is_refused():
    class Typo:
        from hub import hookimpl

        @hookimpl
        def hub_register_adaptors(self, register):  # misspelt
            return None

    host = PluginHost()
    host.register(Typo(), "typo")
    with pytest.raises(Exception, match="unknown hook 'hub_register_adaptors'"):
        host.pm.check_pending()
