"""Checkpoints as one safetensors file each, written atomically; nothing is ever unpickled.

``save_checkpoint(stem, tensors, metadata)`` writes ``stem.safetensors``. The JSON ``metadata``
travels inside the file, in the safetensors header's ``__metadata__`` (a str -> str map), together
with a SHA-256 over the whole header (each tensor's name, dtype, shape and offsets, and the
metadata) and the tensor bytes: :func:`load_checkpoint` refuses a file whose header or tensors were
changed after it was written. Files of older medsoup versions, whose SHA-256 covered only the tensor bytes
(:data:`TENSORS_ONLY_SHA256_KEY`), are refused by name, never trusted. The file is written to a temporary file in the same folder
and moved into place with one ``os.replace``: that move is the single commit point, so a kill at
any instant leaves the old checkpoint or the new one, never a mix of the two. Temporary files of
writes killed before their move are named after the process (and machine) that wrote them and
removed by the next write of the same file on that machine once that process is gone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # torch and safetensors.torch are imported where tensors are read or written, so that
    import torch   # reading a header (python -m medsoup.runs) starts without them

#: Keys of the safetensors ``__metadata__`` map that medsoup uses: the JSON metadata, and the
#: SHA-256 of the header (without this key) and the tensor bytes (:func:`file_digest`).
METADATA_KEY, SHA256_KEY = "medsoup.metadata", "medsoup.sha256-header-tensors"
#: The key of older files, whose SHA-256 covered the tensor bytes only.
TENSORS_ONLY_SHA256_KEY = "medsoup.sha256"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or does not fit the model it is loaded into."""


def checkpoint_path(stem: str | os.PathLike) -> Path:
    """The file of checkpoint ``stem`` (given with or without its ``.safetensors`` suffix)."""
    stem = Path(stem)
    return stem if stem.suffix == ".safetensors" else stem.with_name(stem.name + ".safetensors")


def exists(stem: str | os.PathLike) -> bool:
    return checkpoint_path(stem).is_file()


def _write_all(fd: int, payload: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def writer_tag(pid: int | None = None) -> str:
    """``<pid>_<host>``: names a temporary file or folder after the process that writes it."""
    return f"{os.getpid() if pid is None else pid}_{_HOST}"


def written_by_dead_process(tag: str) -> bool:
    """Whether a :func:`writer_tag` names a process of this machine that no longer exists (its
    temporaries can never be completed). Tags of other machines are never judged."""
    pid, _, host = tag.partition("_")
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user holds that id
        return False
    return False


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporary files of ``path`` left by writers that were killed; return them.

    Temporary names are ``.<name>.<writer_tag>.<random>.tmp``; a file whose writer process no longer
    exists can never be moved into place. Files of live processes (a concurrent writer) and of other
    machines sharing the folder are kept.
    """
    removed, prefix = [], _temp_prefix(path)
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        if not (candidate.name.startswith(prefix) and candidate.name.endswith(".tmp")):
            continue
        if written_by_dead_process(candidate.name[len(prefix):].split(".", 1)[0]):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that a reader sees the old or the new file, never a part.

    ``path`` itself is replaced, never followed: a symbolic link planted at ``path`` is replaced
    by the file, not written through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        _write_all(fd, payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(Path(path), text.encode())


def _split(payload: bytes, path: Path) -> tuple[dict, bytes]:
    """The safetensors header (parsed JSON) and the tensor bytes of ``payload``."""
    size = int.from_bytes(payload[:8], "little") if len(payload) >= 8 else -1
    if size < 2 or 8 + size > len(payload):
        raise CheckpointError(f"{path} is not a safetensors file (truncated, or another format)")
    try:
        header = json.loads(payload[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} has a safetensors header that is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a safetensors header that is not a JSON object")
    return header, payload[8 + size:]


def file_digest(header: dict, data: bytes) -> str:
    """SHA-256 over the safetensors ``header`` (every tensor entry and the ``__metadata__`` map,
    :data:`SHA256_KEY` left out, as canonical JSON) and the tensor bytes ``data``."""
    extra = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != SHA256_KEY}
    canonical = json.dumps({**{k: v for k, v in header.items() if k != "__metadata__"}, "__metadata__": extra},
                           sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(len(canonical).to_bytes(8, "little"))
    digest.update(canonical)
    digest.update(data)
    return digest.hexdigest()


def _medsoup_metadata(header: dict, path: Path) -> tuple[dict[str, Any], str]:
    extra = header.get("__metadata__") or {}
    if METADATA_KEY in extra and SHA256_KEY not in extra and TENSORS_ONLY_SHA256_KEY in extra:
        raise CheckpointError(f"{path} was written by an older medsoup whose SHA-256 ({TENSORS_ONLY_SHA256_KEY!r}) "
                              "covers the tensors but not the header, so its header cannot be trusted; it is "
                              "refused: write it again (re-run the run it belongs to)")
    if METADATA_KEY not in extra or SHA256_KEY not in extra:
        raise CheckpointError(f"{path} is a safetensors file without medsoup's metadata "
                              f"({METADATA_KEY!r}, {SHA256_KEY!r} in its header); write it with "
                              "medsoup.core.checkpoint.save_checkpoint")
    try:
        metadata = json.loads(extra[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: the metadata in its header is not valid JSON ({error})") from None
    return metadata, extra[SHA256_KEY]


def save_checkpoint(stem: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Atomically write ``tensors`` (a flat name -> tensor map) and JSON ``metadata`` as one file."""
    from safetensors.torch import save

    path = checkpoint_path(stem)
    flat = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    extra = {METADATA_KEY: json.dumps(dict(metadata or {}), sort_keys=True, default=str)}
    # The tensor entries, their offsets and the tensor bytes do not depend on the metadata.
    header, data = _split(save(flat), path)
    extra[SHA256_KEY] = file_digest({**header, "__metadata__": extra}, data)
    atomic_write_bytes(path, save(flat, metadata=extra))
    return path


def _read(stem: str | os.PathLike, header_only: bool = False) -> tuple[Path, bytes]:
    """The checkpoint's path and its bytes (with ``header_only``, the length and header only)."""
    path = checkpoint_path(stem)
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if not header_only:
        return path, path.read_bytes()
    with open(path, "rb") as handle:
        start = handle.read(8)
        size = int.from_bytes(start, "little") if len(start) == 8 else 0
        return path, start + handle.read(min(size, 100_000_000))  # safetensors' own header limit


def load_checkpoint(stem: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(tensors, metadata)``; raise :class:`CheckpointError` if missing or corrupted."""
    from safetensors.torch import load

    path, payload = _read(stem)
    header, data = _split(payload, path)
    metadata, digest = _medsoup_metadata(header, path)
    if file_digest(header, data) != digest:
        raise CheckpointError(f"the header or the tensors of {path} do not match the SHA-256 recorded in its "
                              "header: the file is corrupted or was changed after it was written")
    try:
        tensors = load(payload)
    except Exception as error:  # safetensors raises its own SafetensorError on an inconsistent header
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    return {k: v.to(device) for k, v in tensors.items()}, metadata


def load_metadata(stem: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, read from its header alone (neither header nor tensors
    are verified: :func:`load_checkpoint` does that)."""
    path, payload = _read(stem, header_only=True)
    return _medsoup_metadata(_split(payload, path)[0], path)[0]


def set_aside(stem: str | os.PathLike) -> Path:
    """Rename an unusable checkpoint to ``<stem>.unreadable-<n>.safetensors`` (kept for inspection)
    and return the new path."""
    path = checkpoint_path(stem)
    for n in itertools.count(1):
        aside = path.with_name(f"{path.stem}.unreadable-{n}{path.suffix}")
        if not aside.exists():
            os.replace(path, aside)
            return aside


def remove_checkpoint(stem: str | os.PathLike) -> None:
    """Delete a checkpoint and the temporaries of its killed writes."""
    path = checkpoint_path(stem)
    path.unlink(missing_ok=True)
    remove_stale_temporaries(path)


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
