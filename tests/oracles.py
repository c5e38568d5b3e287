"""Established implementations used as test oracles (never as code to copy).

- diffusers: imported normally (an optional test dependency).
- k-diffusion: only ``k_diffusion.sampling``, loaded by
  ``fastdiff_edu.integrations.k_diffusion.load_sampling`` (its package ``__init__`` imports
  training dependencies we do not install). ``make install`` installs it with ``--no-deps``.

Both loaders skip the calling test when the library is missing; ``.ci/run`` checks that they
are installed, so in CI a parity test never skips silently.
"""
from __future__ import annotations

import pytest

from fastdiff_edu.integrations.k_diffusion import load_sampling


def k_diffusion_sampling():
    """The ``k_diffusion.sampling`` module, or skip the test if k-diffusion is not installed."""
    module = load_sampling()
    if module is None:
        pytest.skip("k-diffusion is not installed (make install adds it with --no-deps)")
    return module


def diffusers():
    """The ``diffusers`` package, or skip the test if it is not installed."""
    return pytest.importorskip("diffusers")
