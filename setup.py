"""Minimal setup.py: cffi's ``cffi_modules`` hook builds ``device_model._chip`` from ``cext/``."""

from setuptools import setup

setup(cffi_modules=["cext/build_chip.py:ffibuilder"])
