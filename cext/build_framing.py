"""cffi build script for ``protocol._framing_c``, the frame codec's optional C accelerator.

The protocol package imports nothing else of this project, so its accelerator is a module of
its own, built from ``cext/framing*.c`` with ``cext/framing_api.h`` as the cffi ``cdef``
(preprocessor lines stripped), the same way ``build_chip.py`` builds ``device_model._chip``
(which skips these files). ``protocol.framing`` falls back to its pure-Python codec, the
reference, when the module is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "framing_api.h"


def _rel(p: Path) -> str:
    # setuptools wants source paths relative to the project root
    return os.path.relpath(p, HERE.parent)


def _cdef_text() -> str:
    lines = HEADER.read_text().splitlines()
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))


def _compile_args() -> list[str]:
    args = ["-O3", "-std=c11", "-Wall", "-Wextra"]
    if os.environ.get("MICROTRAIN_WERROR", "1") == "1":
        args.append("-Werror")
    if sys.platform != "win32":
        args.append("-fvisibility=hidden")
    return args


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "protocol._framing_c",
    f'#include "{HEADER.name}"',
    sources=[_rel(p) for p in sorted(HERE.glob("framing*.c"))],
    include_dirs=[_rel(HERE)],
    extra_compile_args=_compile_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
