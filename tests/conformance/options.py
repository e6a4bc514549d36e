"""The conformance suite's command-line options, in a module of their own so that a top-level
conftest can register them too (``add_options`` is idempotent)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

DEFAULT_DEVICE = "emu://hnpu-v2"


def add_options(parser: pytest.Parser) -> None:
    """Register --device, --device-key and --device-baud (a second call adds nothing)."""
    group = parser.getgroup("conformance", "device conformance suite")
    options: list[tuple[str, dict[str, Any]]] = [
        (
            "--device",
            {
                "default": DEFAULT_DEVICE,
                "help": f"device URL under test (default {DEFAULT_DEVICE})",
            },
        ),
        ("--device-key", {"default": None, "help": "auth key of the device, as hex"}),
        (
            "--device-baud",
            {"type": int, "default": None, "help": "baud rate of the device's serial port"},
        ),
    ]
    for name, kw in options:
        with contextlib.suppress(ValueError):  # already registered
            group.addoption(name, **kw)
