"""A plugin module that fails to import, as a broken vendor release would."""

raise ImportError("vendor SDK missing")
