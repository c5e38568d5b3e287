"""Load k-diffusion's sampling functions without its package ``__init__``.

k-diffusion's ``__init__`` imports training dependencies (clip, kornia, wandb, torchvision...)
that sampling never needs. :func:`load_sampling` loads only ``k_diffusion.sampling`` (and the
``utils`` module it imports), registering an empty package object so that the relative import
works, with ``torchvision`` stubbed while it loads (``utils`` imports it for image helpers the
samplers never call). Install k-diffusion with ``pip install --no-deps k-diffusion`` (the
Makefile does). Used by the parity tests and the overhead benchmark, as a reference only.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["load_sampling"]


def load_sampling():
    """The ``k_diffusion.sampling`` module, or ``None`` if k-diffusion is not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        stub.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        stubs = {"torchvision": stub, "torchvision.transforms": stub.transforms,
                 "torchvision.transforms.functional": stub.transforms.functional}
    sys.modules.update(stubs)
    try:
        return importlib.import_module("k_diffusion.sampling")
    finally:  # other libraries (diffusers) probe for torchvision: do not leave the stub behind
        for name in stubs:
            sys.modules.pop(name, None)
