"""Small trained weights that ship with the package: safetensors plus a JSON card.

Every weight file ``name.safetensors`` sits next to ``name.json``, a card that records how it was
made (data, schedule, parametrisation, training steps, the command) and the SHA-256 of the
weight file.  :func:`load` recomputes the hash and refuses a file that does not match its card,
so a stale or hand-edited checkpoint fails loudly instead of sampling garbage.  Nothing is ever
downloaded: the files are in the package (``fastdiff_edu/weights/``) or at a path you give.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

SHIPPED_DIR = Path(__file__).parent / "weights"


class WeightsError(RuntimeError):
    """A weight file is missing, or does not match its card."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped name (``"digits-eps"``) or a path to ``.safetensors`` -> the weight file's path."""
    text = str(name_or_path)
    looks_like_path = text.endswith(".safetensors") or os.sep in text or "/" in text
    path = Path(text) if looks_like_path else SHIPPED_DIR / f"{text}.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"no weight file {path}; shipped weights: {', '.join(shipped()) or '(none)'}")
    return path


def shipped() -> list[str]:
    """Names of the weights that ship inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors"))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; weights are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], card: dict) -> Path:
    """Write ``tensors`` as safetensors and ``card`` (plus the file's SHA-256) as JSON, atomically.

    The card must be JSON-serialisable; keys ``sha256`` and ``file`` are filled in here.
    """
    from safetensors.torch import save as to_bytes

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"weight files end in .safetensors, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write_bytes(path, to_bytes(contiguous))
    card = dict(card, file=path.name, sha256=sha256_of(path))
    _atomic_write_bytes(path.with_suffix(".json"),
                        (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return path


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"
         ) -> tuple[dict[str, torch.Tensor], dict]:
    """Load weights and their card; raise :class:`WeightsError` if the hash does not match."""
    from safetensors.torch import load_file

    path = resolve(name_or_path)
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise WeightsError(f"{path.name} has no card {card_path.name}; refusing to load it")
    card = json.loads(card_path.read_text())
    actual = sha256_of(path)
    if card.get("sha256") != actual:
        raise WeightsError(
            f"{path.name} does not match its card: sha256 {actual[:12]}... != "
            f"{str(card.get('sha256'))[:12]}... recorded in {card_path.name}. The file was "
            "changed or corrupted; regenerate it with the command in the card "
            f"({card.get('command', 'unknown')!r}).")
    return load_file(str(path), device=str(device)), card
