"""Conformance suite: runs unchanged against any device URL (``--device``)."""
