"""Tryggbro adapter for a medication-dispenser platform's JSON webhook."""
