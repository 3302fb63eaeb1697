"""Tryggbro SOS Access v4 receiver: TCP source `sos-access` and adapter `sos-access`."""
