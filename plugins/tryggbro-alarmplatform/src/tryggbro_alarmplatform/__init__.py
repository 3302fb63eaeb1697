"""Tryggbro adapter for a safety-alarm response platform's JSON webhook."""
