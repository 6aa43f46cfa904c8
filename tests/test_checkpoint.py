"""Checkpoints: one safetensors file with its metadata, atomic writes, corruption, never unpickled."""

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
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # one file, one commit
    for stem in (tmp_path / "sub" / "model", path):
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


def test_changed_tensor_bytes_are_detected(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "a", _tensors(1.0), {"v": 1})
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0xFF  # one bit pattern of the last tensor
    path.write_bytes(bytes(payload))
    with pytest.raises(ckpt.CheckpointError, match="SHA-256"):
        ckpt.load_checkpoint(tmp_path / "a")


def _edit_header(path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in the safetensors header of ``path``, by hand."""
    payload = path.read_bytes()
    size = int.from_bytes(payload[:8], "little")
    header = payload[8:8 + size]
    assert len(old) == len(new) and header.count(old) == 1
    path.write_bytes(payload[:8] + header.replace(old, new) + payload[8 + size:])


@pytest.mark.parametrize("old,new", [
    (b'\\"epoch\\": 3', b'\\"epoch\\": 9'),  # the medsoup metadata
    (b'"shape":[4,3]', b'"shape":[3,4]'),        # a tensor's shape (same bytes, another layout)
])
def test_an_edited_header_is_refused(tmp_path, old, new):
    path = ckpt.save_checkpoint(tmp_path / "m", _tensors(1.0), {"epoch": 3})
    _edit_header(path, old, new)
    assert ckpt.load_metadata(tmp_path / "m")["epoch"] in (3, 9)  # the header still parses
    with pytest.raises(ckpt.CheckpointError, match="header or the tensors of .* do not match the SHA-256"):
        ckpt.load_checkpoint(tmp_path / "m")


def test_files_whose_sha256_covers_only_the_tensors_are_refused(tmp_path):
    import hashlib
    import json

    from safetensors.torch import save
    flat = {"w": torch.zeros(2)}
    data = save(flat)[8 + int.from_bytes(save(flat)[:8], "little"):]
    old = {ckpt.METADATA_KEY: json.dumps({"epoch": 1}), ckpt.TENSORS_ONLY_SHA256_KEY: hashlib.sha256(data).hexdigest()}
    (tmp_path / "m.safetensors").write_bytes(save(flat, metadata=old))
    with pytest.raises(ckpt.CheckpointError, match="older medsoup .* covers the tensors but not the header"):
        ckpt.load_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("payload,pattern", [
    (b"", "not a safetensors file"),
    (b"\x09\x00\x00\x00\x00\x00\x00\x00{oops", "not a safetensors file"),  # truncated header
    (b"\x05\x00\x00\x00\x00\x00\x00\x00{oops}", "header that is not valid JSON"),
    (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "without medsoup's metadata"),
])
def test_unreadable_files_are_refused_with_the_reason(tmp_path, payload, pattern):
    (tmp_path / "m.safetensors").write_bytes(payload)
    with pytest.raises(ckpt.CheckpointError, match=pattern):
        ckpt.load_checkpoint(tmp_path / "m")


def test_metadata_that_is_not_json_is_named(tmp_path):
    from safetensors.torch import save
    bad = {ckpt.METADATA_KEY: "{not json", ckpt.SHA256_KEY: "0"}
    (tmp_path / "m.safetensors").write_bytes(save({"w": torch.zeros(2)}, metadata=bad))
    with pytest.raises(ckpt.CheckpointError, match="metadata in its header is not valid JSON"):
        ckpt.load_metadata(tmp_path / "m")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="is not a file"):
        ckpt.load_checkpoint(tmp_path / "d")


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    left = tmp_path / f".m.safetensors.{ckpt.writer_tag(dead_pid)}.abc123.tmp"  # a write killed before its move
    left.write_bytes(b"partial")
    alive = tmp_path / f".m.safetensors.{ckpt.writer_tag()}.def456.tmp"  # a concurrent writer's: kept
    alive.write_bytes(b"partial")
    elsewhere = tmp_path / f".m.safetensors.{dead_pid}_otherhost.ghi789.tmp"  # another machine's: kept
    elsewhere.write_bytes(b"partial")
    ckpt.save_checkpoint(tmp_path / "m", _tensors(1.0))
    assert not left.exists() and alive.exists() and elsewhere.exists()
    alive.unlink()
    elsewhere.unlink()
    left.write_bytes(b"partial")
    ckpt.remove_checkpoint(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    (tmp_path / "summary.csv").symlink_to(target)
    ckpt.atomic_write_text(tmp_path / "summary.csv", "new")
    assert target.read_text() == "keep"
    assert not (tmp_path / "summary.csv").is_symlink() and (tmp_path / "summary.csv").read_text() == "new"


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
