"""Checkpoints: safetensors + JSON round trip, atomic writes, torn pairs, never unpickled."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from medsoup.core import checkpoint as ckpt


def _tensors(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4, 3), value), "step": torch.tensor(7), "b": torch.arange(5, dtype=torch.int64)}


def test_round_trip_with_metadata(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "sub" / "model", _tensors(1.5), {"epoch": 3, "name": "x"})
    assert path == tmp_path / "sub" / "model.safetensors"
    assert ckpt.exists(tmp_path / "sub" / "model")
    for stem in (tmp_path / "sub" / "model", path, tmp_path / "sub" / "model.json"):
        tensors, meta = ckpt.load_checkpoint(stem)
        assert meta == {"epoch": 3, "name": "x"}
        assert all(torch.equal(tensors[k], v) for k, v in _tensors(1.5).items())
    assert ckpt.load_metadata(tmp_path / "sub" / "model") == {"epoch": 3, "name": "x"}


def test_save_never_shares_memory_with_the_model(tmp_path):
    weight = torch.zeros(3)
    ckpt.save_checkpoint(tmp_path / "m", {"view": weight[:2]})
    weight += 1
    assert torch.equal(ckpt.load_checkpoint(tmp_path / "m")[0]["view"], torch.zeros(2))


def test_failure_mid_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path / "model", _tensors(1.0), {"version": 1})
    before = sorted(p.name for p in tmp_path.iterdir())

    def partial_then_fail(fd, payload):
        os.write(fd, b"\x10\x00\x00\x00partial")
        os.close(fd)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_all", partial_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path / "model", _tensors(2.0), {"version": 2})
    tensors, meta = ckpt.load_checkpoint(tmp_path / "model")
    assert meta == {"version": 1} and torch.equal(tensors["w"], torch.full((4, 3), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left


def test_torn_pair_is_detected(tmp_path):
    ckpt.save_checkpoint(tmp_path / "a", _tensors(1.0), {"v": 1})
    ckpt.save_checkpoint(tmp_path / "b", _tensors(2.0), {"v": 2})
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")  # weights of b, JSON of a
    with pytest.raises(ckpt.CheckpointError, match="SHA-256"):
        ckpt.load_checkpoint(tmp_path / "a")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nothing")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_metadata(tmp_path / "nothing")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path / "m", _tensors(3.0), {"k": [1, 2]})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    tensors, meta = ckpt.load_checkpoint(tmp_path / "m")
    assert meta == {"k": [1, 2]} and torch.equal(tensors["w"], torch.full((4, 3), 3.0))


def test_atomic_write_text_failure_keeps_old_text(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    ckpt.atomic_write_text(path, "old")

    def fail(*args):
        raise OSError("no space")

    monkeypatch.setattr(ckpt.os, "replace", fail)
    with pytest.raises(OSError):
        ckpt.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_load_state_into_names_every_kind_of_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    state = {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2), "extra": torch.zeros(1)}
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load_state_into(model, state)
    message = str(error.value)
    assert "missing in checkpoint (2): 1.bias, 1.weight" in message
    assert "not in model (1): extra" in message
    assert "0.weight: checkpoint (2, 4) vs model (2, 3)" in message


def test_load_state_into_ignores_named_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    head = model[1].weight.detach().clone()
    source = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 5)).state_dict()
    ckpt.load_state_into(model, source, ignore=("1.weight", "1.bias"))
    assert torch.equal(model[0].weight, source["0.weight"]) and torch.equal(model[1].weight, head)
