"""Reading pickles without running code from them: numpy arrays and plain containers only.

detectron2 checkpoints and the REFER API's refs files are pickles; :class:`RestrictedUnpickler`
rebuilds what they legitimately hold and refuses anything else before it is called.
"""
from __future__ import annotations

import importlib
import os
import pickle

import numpy as np

from .errors import InputError, UnsafePickleError

# (module, name) pairs a weights or annotation pickle may rebuild: numpy arrays, dtypes and
# scalars, and plain containers. Everything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays and plain containers.

    A pickle that names any other callable (``os.system``, ``builtins.eval``, a class...) is
    refused with :class:`pickle.UnpicklingError` before anything is called.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only numpy arrays and plain containers are allowed "
                "(this file may try to run code)")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = module.replace("numpy.core", "numpy._core", 1)
        if module == "__builtin__":
            module = "builtins"
        return getattr(importlib.import_module(module), name)


def safe_pickle_load(path: str | os.PathLike):
    """Load a pickle (Python 2 pickles included) with :class:`RestrictedUnpickler`."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except (EOFError, ValueError) as e:
            raise InputError(f"{path}: not a readable pickle ({e})") from None
