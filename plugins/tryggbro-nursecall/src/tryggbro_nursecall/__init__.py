"""Tryggbro adapter for a nurse-call system's (sykesignalanlegg) JSON webhook."""
