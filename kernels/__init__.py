"""Numeric kernels: fusion, constrained decoding, MUVERA, Chamfer, Sinkhorn, SPANN clustering.

Pure functions over arrays and tensors, except ``fmindex.FMIndex``, which also saves and
loads its own arrays (memory-mapped ``.npy`` + a JSON header).

This folder is the package ``genseek.kernels``. When the repository root is on ``sys.path``
(``python -m pytest`` or a REPL started there), ``import kernels`` would find this folder
instead of Hugging Face's ``kernels`` package, which transformers imports; in that case the
import is handed on to the real package, found on the rest of ``sys.path``.
"""

if __name__ != "genseek.kernels":  # imported as top-level ``kernels``: not us
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _path)
    if _spec is None or _spec.loader is None:
        raise ImportError(f"no module named {__name__!r} outside {_root} "
                          "(this folder is genseek.kernels)")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
