"""Established implementations used as test oracles (never as code to copy).

- diffusers: imported normally (an optional test dependency).
- k-diffusion: its package ``__init__`` imports training dependencies (clip, kornia, wandb,
  torchvision...) that we do not install. We load only ``k_diffusion.sampling`` (and the
  ``utils`` module it imports), registering an empty package object so that the relative import
  works, with ``torchvision`` stubbed: ``utils`` imports it for image helpers the samplers never
  call. ``make install`` installs k-diffusion with ``--no-deps`` plus what ``sampling`` needs.

Both loaders skip the calling test when the library is missing; ``.ci/run`` checks that they
are installed, so in CI a parity test never skips silently.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def k_diffusion_sampling():
    """The ``k_diffusion.sampling`` module, or skip the test if k-diffusion is not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (make install adds it with --no-deps)")
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


def diffusers():
    """The ``diffusers`` package, or skip the test if it is not installed."""
    return pytest.importorskip("diffusers")
