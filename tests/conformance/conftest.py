"""Options and fixtures of the conformance suite.

``pytest tests/conformance --device URL`` runs the suite against any device the host can open:
``emu://hnpu-v2`` (the default, in-process), a pty printed by ``microtrain serve --pty``,
``socket://HOST:PORT`` of ``microtrain serve --tcp``, or a board's serial port. A keyed device
takes ``--device-key HEX``; a UART takes ``--device-baud N`` (it scales the host's deadlines).

The options are registered here, which pytest loads at startup when the run names this
directory (``pytest tests/conformance --device URL``). A plain ``pytest`` from the project root
reaches this file only after parsing its command line: the suite then runs with the defaults,
and ``--device`` there needs a top-level conftest calling
``tests.conformance.options.add_options`` in its ``pytest_addoption``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import host
from tests.conformance.options import DEFAULT_DEVICE, add_options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _option(config: pytest.Config, name: str, default: object) -> object:
    try:
        return config.getoption(name)
    except ValueError:  # registered too late for this command line: use the default
        return default


@pytest.fixture(scope="session")
def device_url(pytestconfig: pytest.Config) -> str:
    """URL of the device under test."""
    return str(_option(pytestconfig, "--device", DEFAULT_DEVICE))


@pytest.fixture(scope="session")
def open_device(pytestconfig: pytest.Config, device_url: str) -> Callable[[], host.Device]:
    """Opens a new session with the device under test (key and baud rate applied)."""
    key_hex = _option(pytestconfig, "--device-key", None)
    baud = _option(pytestconfig, "--device-baud", None)
    key = bytes.fromhex(str(key_hex)) if key_hex else None

    def opener() -> host.Device:
        return host.open(device_url, key=key, baudrate=baud if isinstance(baud, int) else None)

    return opener


@pytest.fixture(scope="module")
def dev(open_device: Callable[[], host.Device]) -> Iterator[host.Device]:
    """One session per test module: the device must stay usable across its tests."""
    d = open_device()
    yield d
    d.close()
