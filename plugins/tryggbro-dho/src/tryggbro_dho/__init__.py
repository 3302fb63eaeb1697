"""Tryggbro adapters for DHO measurements (digital hjemmeoppfølging)."""
