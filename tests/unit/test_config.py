"""Configuration errors name the file, the key and what was expected."""

from pathlib import Path

import pytest

from hub.config import config_from_dict, load_config, require_env
from hub.errors import ConfigError

FILE = Path("/etc/tryggbro/test.toml")


def errors(data):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, FILE)
    return str(info.value)


def test_example_config_is_valid(monkeypatch):
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "tryggbro.example.toml")
    assert config.sources["alarmplatform"].adapter == "alarmplatform"
    assert config.database_url().startswith("sqlite:///")
    assert config.database_url().endswith("/var/tryggbro.db")
    assert str(root) in config.database_url()  # relative to the file, not the cwd


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[hub\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML.*line 1"):
        load_config(bad)


def test_wrong_type_names_key_and_value():
    text = errors({"http": {"port": "eighty"}})
    assert "test.toml: http.port:" in text
    assert "'eighty'" in text


def test_unknown_key_is_refused():
    assert "hub.instanse: Extra inputs are not permitted" in errors({"hub": {"instanse": "x"}})


def test_secrets_in_the_file_are_refused_with_the_alternative():
    text = errors({"sources": {"a": {"adapter": "x", "api_key": "hunter2"}}})
    assert "sources.a.api_key" in text
    assert "_env" in text
    assert "hunter2" not in text


def test_password_in_database_url_is_refused():
    text = errors({"database": {"url": "postgresql+psycopg://u:secret@db/x"}})
    assert "database.url" in text
    assert "url_env" in text
    assert "secret" not in text.replace("secrets", "")


def test_references_are_checked_after_plugins_load():
    config = config_from_dict({
        "sources": {"s": {"adapter": "nope"}},
        "destinations": {"d": {"type": "folder", "path": "x"}},
        "routes": [{"name": "r", "destinations": ["missing"]},
                   {"name": "r", "action": "filter", "destinations": ["d"]}],
    }, FILE)
    with pytest.raises(ConfigError) as info:
        config.validate_references(["alarmplatform"], ["folder"], ["http"])
    text = str(info.value)
    assert "sources.s.adapter: no adapter named 'nope'" in text
    assert "no destination named 'missing'" in text
    assert "'r' is used more than once" in text
    assert "a filter route takes no destinations" in text


def test_require_env_names_key_and_variable(monkeypatch):
    config = config_from_dict({}, FILE)
    monkeypatch.delenv("TRYGGBRO_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"test\.toml: admin.x_env: environment variable "
                                          r"TRYGGBRO_NOT_SET is not set"):
        require_env(config, "admin.x_env", "TRYGGBRO_NOT_SET")
