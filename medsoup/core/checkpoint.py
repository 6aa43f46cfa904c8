"""Checkpoints as safetensors + JSON, written atomically; nothing is ever unpickled.

``save_checkpoint(stem, tensors, metadata)`` writes ``stem.safetensors`` and ``stem.json``.
Both are first written to temporary files in the same folder and then moved into place with
``os.replace``; the JSON carries the SHA-256 of the tensor file, so a pair torn by a kill between
the two moves is detected on load instead of being used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load, save


class CheckpointError(RuntimeError):
    """A checkpoint is missing, torn, or does not fit the model it is loaded into."""


def _paths(stem: str | os.PathLike) -> tuple[Path, Path]:
    stem = Path(stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def exists(stem: str | os.PathLike) -> bool:
    weights, meta = _paths(stem)
    return weights.exists() and meta.exists()


def _write_all(fd: int, payload: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that a reader sees the old or the new file, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        _write_all(fd, payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(Path(path), text.encode())


def save_checkpoint(stem: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Atomically write ``tensors`` (a flat name -> tensor map) and JSON ``metadata``."""
    weights, meta = _paths(stem)
    flat = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    payload = save(flat)
    atomic_write_bytes(weights, payload)
    digest = hashlib.sha256(payload).hexdigest()
    record = {"metadata": dict(metadata or {}), "sha256": digest}
    atomic_write_text(meta, json.dumps(record, indent=1, sort_keys=True, default=str))
    return weights


def load_checkpoint(stem: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(tensors, metadata)``; raise :class:`CheckpointError` if missing or torn."""
    weights, meta = _paths(stem)
    for path in (weights, meta):
        if not path.exists():
            raise CheckpointError(f"checkpoint file {path} does not exist")
    record = json.loads(meta.read_text())
    payload = weights.read_bytes()
    if record.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise CheckpointError(f"{weights} does not match the SHA-256 recorded in {meta}: the pair is "
                              "torn (interrupted write) or one file was replaced")
    return {k: v.to(device) for k, v in load(payload).items()}, record["metadata"]


def load_metadata(stem: str | os.PathLike) -> dict[str, Any]:
    _, meta = _paths(stem)
    if not meta.exists():
        raise CheckpointError(f"checkpoint metadata {meta} does not exist")
    return json.loads(meta.read_text())["metadata"]


def load_state_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor],
                    ignore: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into ``model``, raising an error that names every mismatched key.

    Keys in ``ignore`` (e.g. a classifier of another size) are left as initialised.
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and k not in ignore)
    unexpected = sorted(k for k in state if k not in own and k not in ignore)
    wrong = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state and k not in ignore and state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing in checkpoint", missing), ("not in model", unexpected),
                            ("shape mismatch", wrong)):
            if keys:
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        raise CheckpointError("checkpoint does not fit the model (another architecture?); " + "; ".join(parts))
    kept = {k: v for k, v in state.items() if k not in ignore}
    model.load_state_dict(kept, strict=not ignore)
