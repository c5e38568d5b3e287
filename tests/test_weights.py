"""Shipped-weight files: atomic save with a card, hash-checked load."""
import json

import pytest
import torch

from fastdiff_edu import weights


def test_roundtrip_and_card(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float64)}
    path = weights.save(tmp_path / "tiny.safetensors", tensors, {"data": "none", "steps": 3})
    loaded, card = weights.load(path)
    assert card["steps"] == 3 and card["file"] == "tiny.safetensors"
    assert card["sha256"] == weights.sha256_of(path)
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype
    assert not list(tmp_path.glob("*.tmp"))


def test_tampered_file_is_refused(tmp_path):
    path = weights.save(tmp_path / "tiny.safetensors", {"w": torch.zeros(4)}, {"command": "make it"})
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(weights.WeightsError, match="does not match its card.*make it"):
        weights.load(path)


def test_missing_card_or_file(tmp_path):
    path = weights.save(tmp_path / "tiny.safetensors", {"w": torch.zeros(1)}, {})
    path.with_suffix(".json").unlink()
    with pytest.raises(weights.WeightsError, match="no card"):
        weights.load(path)
    with pytest.raises(weights.WeightsError, match="no weight file"):
        weights.load("no-such-shipped-model")
    with pytest.raises(ValueError, match=".safetensors"):
        weights.save(tmp_path / "x.pt", {}, {})


def test_card_records_hash_of_file(tmp_path):
    path = weights.save(tmp_path / "a.safetensors", {"w": torch.randn(5)}, {"k": 1})
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == weights.sha256_of(path)
