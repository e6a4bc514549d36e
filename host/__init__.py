"""The host driver and the ``microtrain`` CLI."""
