"""cffi build script for ``device_model._chip``, the C datapath of the emulated chip.

Every ``cext/*_api.h`` header is both included by the C sources and handed to cffi's
``cdef`` (preprocessor lines stripped), so the declarations exist in one place only.
Every ``cext/*.c`` file is compiled into the module with ``-Wall -Wextra``; a warning is a bug.
Files whose name starts with ``framing`` are not the chip's: they are the frame codec of the
protocol package, built into ``protocol._framing_c`` by ``build_framing.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


#: Name prefix of the cext/ files that belong to another module (see the docstring).
NOT_CHIP = ("framing",)


def _chip_files(pattern: str) -> list[Path]:
    return [p for p in sorted(HERE.glob(pattern)) if not p.name.startswith(NOT_CHIP)]


def _rel(p: Path) -> str:
    # setuptools wants source paths relative to the project root
    return os.path.relpath(p, HERE.parent)


def _cdef_text() -> str:
    parts = []
    for header in _chip_files("*_api.h"):
        lines = [ln for ln in header.read_text().splitlines() if not ln.lstrip().startswith("#")]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def _compile_args() -> list[str]:
    args = ["-O3", "-std=c11", "-Wall", "-Wextra", "-fno-strict-aliasing"]
    if os.environ.get("MICROTRAIN_WERROR", "1") == "1":
        args.append("-Werror")
    if sys.platform != "win32":
        args += ["-fvisibility=hidden", "-pthread"]
    return args


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "device_model._chip",
    "\n".join(f'#include "{h.name}"' for h in _chip_files("*_api.h")),
    sources=[_rel(p) for p in _chip_files("*.c")],
    include_dirs=[_rel(HERE), _rel(HERE / "include")],
    extra_compile_args=_compile_args(),
    extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
