"""Tryggbro adapter for an electronic door-lock system's JSON webhook (elektronisk dørlås)."""
