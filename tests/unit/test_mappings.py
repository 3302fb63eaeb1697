"""Mapping tables are data, checked against the code systems at start-up."""

from pathlib import Path

import pytest

from hub.errors import ConfigError, MappingError
from hub.mappings import MappingStore

REPO_MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def test_repository_mappings_load():
    store = MappingStore.load(REPO_MAPPINGS)
    alert = store.codesystem("vkp-alert-code")
    assert alert.url == "http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090"
    assert "3" in alert
    assert "4.26" in alert
    assert "1.23" in alert
    assert "2" not in store.codesystem("vkp-composition-event")  # there is no code 2
    steps = store.table("alarmplatform").section("timeline_steps")
    assert steps.lookup("acknowledged") == "3"


def make_store(tmp_path, table_text):
    cs = tmp_path / "codesystems"
    cs.mkdir()
    (cs / "demo-codes.toml").write_text('url = "http://example.org/cs"\n[codes]\n"1" = "one"\n')
    (tmp_path / "vendor.toml").write_text(table_text)
    return MappingStore.load(tmp_path)


def test_code_not_in_codesystem_stops_start_up(tmp_path):
    with pytest.raises(ConfigError) as info:
        make_store(tmp_path, '[kinds]\ncodesystem = "demo-codes"\n[kinds.map]\nup = "1"\n'
                             'down = "9"\n')
    assert "vendor.toml: [kinds] maps to codes not in demo-codes: down = '9'" in str(info.value)


def test_unknown_codesystem_and_bad_default(tmp_path):
    with pytest.raises(ConfigError, match="is not a known code system"):
        make_store(tmp_path, '[k]\ncodesystem = "nope"\n[k.map]\na = "1"\n')


def test_lookup_without_default_says_where_to_add(tmp_path):
    store = make_store(tmp_path, '[kinds]\ncodesystem = "demo-codes"\n[kinds.map]\nup = "1"\n')
    section = store.table("vendor").section("kinds")
    with pytest.raises(MappingError, match=r"vendor.toml \[kinds\] has no mapping for 'sideways'"):
        section.lookup("sideways")
    with pytest.raises(ConfigError, match="missing section"):
        store.table("vendor").section("nope")
    with pytest.raises(ConfigError, match="mapping table 'absent' not found"):
        store.table("absent")
