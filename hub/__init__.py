"""Tryggbro: an integration hub for Norwegian municipal welfare technology.

Plugins import `hookimpl` from here::

    from hub import hookimpl

    @hookimpl
    def hub_register_adapters(register): ...
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy

from hub.hookspecs import PROJECT

hookimpl = pluggy.HookimplMarker(PROJECT)

try:
    __version__ = version("tryggbro")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__", "hookimpl"]
