"""A tiny third-party plugin module used by the plugin-manager tests."""

from hub import hookimpl


@hookimpl
def hub_register_adapters(register):
    return None
