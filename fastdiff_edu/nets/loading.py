"""Load a shipped (or your own) trained model as a ready :class:`~fastdiff_edu.prediction.Prediction`.

    model = fastdiff_edu.nets.load("digits-eps")
    x_T = model.schedule.prior_sample((16, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    x0 = fd.sample(model, x_T, "dpm-solver++2m", nfe=10)

The weight file's card says everything needed to rebuild the model (network and its
configuration, schedule, parametrisation, time input), so the loader has no table of its own
that could drift from the files; :func:`fastdiff_edu.weights.load` checks the SHA-256 first.
Nothing is downloaded.
"""
from __future__ import annotations

import json
import os

import torch

from .. import weights
from ..prediction import Prediction
from .conditioning import Conditioned, to_prediction

__all__ = ["load", "shipped_models", "sample_shape"]


def shipped_models() -> list[str]:
    """Names of the diffusion models that ship with the package (not the classifier)."""
    names = []
    for name in weights.shipped():
        card = weights.SHIPPED_DIR / f"{name}.json"
        try:
            if json.loads(card.read_text()).get("model_type") == "diffusion":
                names.append(name)
        except (OSError, ValueError):
            continue
    return names


def sample_shape(card: dict, n: int) -> tuple[int, ...]:
    """The shape of ``n`` samples for a model card: (n, 1, 8, 8) for digits, (n, 2) for 2D."""
    return (n, 1, 8, 8) if card["data"] == "digits" else (n, card["network_config"]["dim"])


def load(name: str | os.PathLike, device: str | torch.device = "cpu", *, dtype: torch.dtype = torch.float32
         ) -> Prediction:
    """A shipped model by name (``"digits-eps"``, ``"moons-eps"``, ``"ring-eps"``) or a
    ``.safetensors`` file written by ``python -m fastdiff_edu.nets.train``.

    Returns a :class:`Prediction` with the model's schedule, kind and time input; the network
    runs in ``dtype`` on ``device`` (inputs of other dtypes are cast, outputs cast back). Its
    ``card`` attribute holds the card and ``net`` the network; ``sample_shape(n)`` gives the
    shape of ``n`` samples.
    """
    text = str(name)
    is_path = text.endswith(".safetensors") or "/" in text or os.sep in text
    if not is_path and text not in shipped_models():
        raise ValueError(f"unknown model {text!r}; shipped models: {', '.join(shipped_models()) or '(none)'}. "
                         "Train your own with `python -m fastdiff_edu.nets.train` and pass the .safetensors path.")
    tensors, card = weights.load(name, device=device)
    if card.get("model_type") != "diffusion":
        raise ValueError(f"{text} is a {card.get('model_type', 'unknown')} model, not a diffusion model")
    from .train import build_network  # here, so `python -m fastdiff_edu.nets.train` imports it once

    net = build_network(card["data"], card["network_config"])
    net.load_state_dict(tensors)
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model = to_prediction(Conditioned(net, card["schedule"]), card["param"])
    model.card, model.net = card, net
    model.sample_shape = lambda n: sample_shape(card, n)
    return model
