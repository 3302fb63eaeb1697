"""Tryggbro adapter for a digital-supervision (digitalt tilsyn) sensor platform's webhook."""
