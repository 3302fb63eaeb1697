"""Tryggbro adapter for a GPS alarm platform's JSON webhook (lokaliseringsteknologi)."""
