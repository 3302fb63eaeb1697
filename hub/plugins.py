"""The plugin manager: built-ins and third-party plugins through one entry-point group.

Environment switches:
- ``TRYGGBRO_LOAD_PLUGINS=a,b`` loads only the named third-party plugins (built-ins
  always load unless blocked);
- ``TRYGGBRO_BLOCK_PLUGINS=a,b`` never loads the named plugins, built-in or not.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar, cast

import pluggy

from hub import hookspecs
from hub.errors import ConfigError

ENTRY_POINT_GROUP = "tryggbro"
BUILTIN_DISTRIBUTION = "tryggbro"
LOAD_ENV = "TRYGGBRO_LOAD_PLUGINS"
BLOCK_ENV = "TRYGGBRO_BLOCK_PLUGINS"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    builtin: bool


def _names(env: str) -> set[str] | None:
    raw = os.environ.get(env)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("(unknown)", "(unknown)")
    return (dist.metadata["Name"], dist.version)


class PluginHost:
    """One plugin manager per hub instance (no module global: tests build many hubs)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._info: dict[str, tuple[str, str, bool]] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def load_entry_points(self, eps: Iterable[EntryPoint] | None = None) -> None:
        """Load every plugin of the `tryggbro` entry-point group, honouring the switches."""
        only = _names(LOAD_ENV)
        blocked = _names(BLOCK_ENV) or set()
        seen: dict[str, str] = {}
        found = list(eps) if eps is not None else list(entry_points(group=ENTRY_POINT_GROUP))
        for ep in sorted(found, key=lambda e: e.name):
            dist_name, dist_version = _dist_of(ep)
            if ep.name in seen:
                # pluggy silently skips a second entry point of the same name; we refuse.
                raise ConfigError(
                    f"plugin name {ep.name!r} is declared by both {seen[ep.name]} and "
                    f"{dist_name}; uninstall one of them"
                )
            seen[ep.name] = dist_name
            builtin = dist_name == BUILTIN_DISTRIBUTION
            if ep.name in blocked:
                self.pm.set_blocked(ep.name)
                continue
            if only is not None and not builtin and ep.name not in only:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"plugin {ep.name!r} from distribution {dist_name} {dist_version} "
                    f"failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            self.register(plugin, ep.name, dist_name, dist_version, builtin=builtin)
        self.pm.check_pending()

    def register(
        self,
        plugin: object,
        name: str,
        distribution: str = "(local)",
        version: str = "",
        *,
        builtin: bool = False,
    ) -> None:
        """Register a plugin object or module directly (tests, inline plugins)."""
        self.pm.register(plugin, name=name)
        self._info[name] = (distribution, version, builtin)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._info.pop(name, None)

    def plugins(self) -> list[PluginInfo]:
        """Loaded plugins with their distribution, version and implemented hooks."""
        result = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            dist, ver, builtin = self._info.get(name, ("(local)", "", False))
            result.append(PluginInfo(name, dist, ver, hooks, builtin))
        return sorted(result, key=lambda p: (not p.builtin, p.name))


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Resolve a hook result that may be a value or an awaitable (datasette's helper)."""
    if inspect.isawaitable(value):
        return cast(T, await value)
    return value


def resolve(value: Any, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """A hook result as a value, from synchronous code (the processing thread).

    An awaitable runs on `loop` when the hub's loop is running in another thread (so
    plugins may await clients bound to it), otherwise in a loop of its own.
    """
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # blocking here would stop the very loop the awaitable needs
        raise RuntimeError("a hook returned an awaitable to code running inside an event "
                           "loop; run processing in a worker thread (asyncio.to_thread)")
    if loop is not None and loop.is_running():
        return asyncio.run_coroutine_threadsafe(await_me_maybe(value), loop).result(timeout=60)
    return asyncio.run(await_me_maybe(value))
