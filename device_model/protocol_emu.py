"""pyserial URL handler module for ``emu://`` (found as ``<package>.protocol_emu`` through
``serial.protocol_handler_packages``): the port class is ``device_model.emu_port.EmuSerial``."""

from __future__ import annotations

from device_model.emu_port import EmuSerial as Serial

__all__ = ["Serial"]
