"""Import an mtad module by the layout of the mtad found first on sys.path (bench scripts that measure
another tree: drain.py --base-src/--mtad-src, compose_bench.py --src).

  from mtad_layout import mtad_module
  compose = mtad_module("mtad.mail.compose")     # mtad/mail/compose.py, or mtad/compose.py before the packages

mtad was re-laid out into packages (mtad/base, mail, net, config, store, ...) after revision bebe064, whose
modules were flat (mtad/passwords.py, mtad/compose.py, ...). A name is tried as given (the packages), then
as its flat counterpart: FLAT's entry, or else ``mtad.<last part>``. Only the module's place changed for
the names bench scripts use this way; a function whose signature changed too needs its own care.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

# packaged name -> flat name, where the flat module had another name than the last part
FLAT = {
    "mtad.config.schema": "mtad.config",
    "mtad.store.queue": "mtad.spool",
    "mtad.store.engine": "mtad.store",
}


def mtad_module(name: str) -> ModuleType:
    """The module ``name`` (a packaged name, ``mtad.x.y``) of the mtad first on sys.path, in either layout."""
    root = os.path.dirname(os.path.abspath(importlib.import_module("mtad").__file__ or ""))
    try:
        module = importlib.import_module(name)
        if _inside(module, root):
            return module
        # found elsewhere: an editable install's finder serves the work tree's mtad.x.y when the measured
        # tree (an older layout first on sys.path) has no mtad/x/ -- not the tree being measured
        missing: ModuleNotFoundError | None = None
    except ModuleNotFoundError as packaged:
        if not (packaged.name and name.startswith(packaged.name)):
            raise  # a dependency is missing, not the module: say so
        missing = packaged
    flat = FLAT.get(name, "mtad." + name.rsplit(".", 1)[1])
    try:
        module = importlib.import_module(flat)
    except ModuleNotFoundError:
        module = None
    if module is None or not _inside(module, root):
        raise missing or ModuleNotFoundError(f"{name} (or {flat}) is not part of the mtad in {root}", name=name)
    return module


def _inside(module: ModuleType, root: str) -> bool:
    return os.path.abspath(module.__file__ or "").startswith(root + os.sep)
