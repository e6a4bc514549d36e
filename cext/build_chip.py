"""cffi build script for ``device_model._chip``, the C datapath of the emulated chip.

Every ``cext/*_api.h`` header is both included by the C sources and handed to cffi's
``cdef`` (preprocessor lines stripped), so the declarations exist in one place only.
Every ``cext/*.c`` file is compiled into the module with ``-Wall -Wextra``; a warning is a bug.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _rel(p: Path) -> str:
    # setuptools wants source paths relative to the project root
    return os.path.relpath(p, HERE.parent)


def _cdef_text() -> str:
    parts = []
    for header in sorted(HERE.glob("*_api.h")):
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
    "\n".join(f'#include "{h.name}"' for h in sorted(HERE.glob("*_api.h"))),
    sources=[_rel(p) for p in sorted(HERE.glob("*.c"))],
    include_dirs=[_rel(HERE), _rel(HERE / "include")],
    extra_compile_args=_compile_args(),
    extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
