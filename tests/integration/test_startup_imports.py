"""Start-up loads what the configuration uses, and nothing heavy besides.

Every second of `tryggbro serve`'s start-up is a second in which alarms are not
acknowledged (bench/startup.py measures it). Serve's own process takes intake: it never
processes (its stages run in child processes), so it must not import processing's
libraries (the fhir.resources models), and without an [auth.*] section that signs with a
key it must not import PyJWT and cryptography. Each check runs in a fresh interpreter and
reads its sys.modules: what a module imports is a fact, not a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The intake (parent) process of `tryggbro serve`: plugins, Hub.build with its sources and
# the database, and the HTTP app, as hub.cli's serve builds them before serving.
SERVE_INTAKE = """
import json, sys
from hub.api.app import create_app
from hub.config import load_config
from hub.plugins import PluginHost
from hub.runtime import Hub

plugins = PluginHost()
plugins.load_entry_points()
config = load_config(sys.argv[1])
hub = Hub.build(config, plugins=plugins, own=True, with_sources=sys.argv[3] == "sources",
                database_url=sys.argv[2])
create_app(hub)
hub.close()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
                        {"jwt", "cryptography", "fhir", "fhir_core", "hub"})))
"""

SIGNING = {"jwt", "cryptography"}
PROCESSING = {"fhir.resources", "fhir_core", "hub.processing", "hub.fhir.validate"}


def loaded(config: Path, tmp_path: Path, *, sources: bool) -> set[str]:
    env = {**os.environ, "TRYGGBRO_ALARMPLATFORM_API_KEY": "k",
           "TRYGGBRO_ADMIN_VIEWER_TOKENS": "v", "TRYGGBRO_ADMIN_OPERATOR_TOKENS": "o"}
    out = subprocess.run(
        [sys.executable, "-c", SERVE_INTAKE, str(config), f"sqlite:///{tmp_path}/hub.db",
         "sources" if sources else "no-sources"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_serve_intake_without_auth_imports_neither_jwt_nor_the_fhir_models(tmp_path):
    modules = loaded(ROOT / "tryggbro.example.toml", tmp_path, sources=True)
    assert "hub.runtime" in modules  # the path serve takes was taken
    assert "hub.api.app" in modules
    assert "hub.auth" in modules  # the settings are there; the signing libraries are not
    assert not {m for m in modules if m.split(".")[0] in SIGNING}
    assert not (modules & PROCESSING)


def test_a_configured_helseid_section_loads_the_signing_libraries_at_start_up(tmp_path):
    # examples/national.toml has [auth.helseid-4601] (type "helseid") for its national
    # destinations: a broken PyJWT/cryptography install must stop start-up, not the first
    # token request.
    modules = loaded(ROOT / "examples" / "national.toml", tmp_path, sources=False)
    assert {"jwt", "cryptography", "hub.auth.keys"} <= modules
    assert not (modules & PROCESSING)
