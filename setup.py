"""Minimal setup.py: cffi's ``cffi_modules`` hook builds ``device_model._chip`` and
``protocol._framing_c`` (the frame codec's accelerator) from ``cext/``."""

from setuptools import setup

setup(cffi_modules=["cext/build_chip.py:ffibuilder", "cext/build_framing.py:ffibuilder"])
