"""The hub's `mllp` source as `tryggbro serve` runs it, for bench/mllp_ingest.py.

`python bench/mllp_hub_server.py CONFIG` builds the hub from CONFIG with every installed
plugin plus the test-only adapter `test-hl7v2-journal` (the real `hl7v2` adapter is not
what is measured), and runs intake and sources only: durable ingest, no processing.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hub.config import load_config  # noqa: E402
from hub.logging import configure_logging  # noqa: E402
from hub.plugins import PluginHost  # noqa: E402
from hub.runtime import Hub  # noqa: E402
from tests.integration import hl7_test_plugin  # noqa: E402


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    configure_logging(config.logging.level)
    plugins = PluginHost()
    plugins.load_entry_points()
    plugins.register(hl7_test_plugin, "test-hl7v2")
    hub = Hub.build(config, plugins=plugins, own=True)
    run = hub.run(serve_http=True, stages=())
    try:
        import uvloop
    except ImportError:
        asyncio.run(run)
    else:
        uvloop.run(run)
    hub.close()


if __name__ == "__main__":
    main()
