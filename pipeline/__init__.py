"""Distributed batch transcoding of image datasets with MS-INN on Ray."""

from .faults import register as _register_fault_fs

_register_fault_fs()
