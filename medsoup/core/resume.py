"""Resumable training: :func:`~medsoup.core.train.fit`'s state after every epoch, and reading it back.

The model, the best model so far, the optimizer, both random generators and the callbacks' state go
into one safetensors checkpoint with the epoch's metadata (:mod:`medsoup.core.checkpoint`: atomic, so
a kill leaves the previous epoch's state or the new one). A checkpoint written for another training
config, data or model is refused, naming what differs (:func:`check_resume_signature`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from medsoup.core import checkpoint as ckpt
from medsoup.core.data import MedData

if TYPE_CHECKING:
    from medsoup.core.train import TrainConfig


def resume_signature(model: nn.Module, data: MedData, config: TrainConfig) -> dict:
    """What a resume checkpoint must have been written for: the training config, the data and the
    model's parameter names and shapes (JSON values)."""
    return json.loads(json.dumps({
        "train_config": dataclasses.asdict(config),
        "data": {"name": data.name, "size": data.size, "train_images": len(data.splits["train"])},
        "parameters": {k: list(v.shape) for k, v in model.state_dict().items()}}))


def check_resume_signature(stem, recorded: dict | None, expected: dict) -> None:
    """Refuse to resume from a checkpoint written for another config, naming what differs."""
    if recorded is None:
        raise ckpt.CheckpointError(f"resume checkpoint {stem} records no training config; delete it to start over")
    differences = []
    for part, value in expected.items():
        old = recorded.get(part)
        if isinstance(value, dict) and isinstance(old, dict):
            differences += [f"{part}.{k}: checkpoint {old.get(k, '(absent)')!r} vs now {value.get(k, '(absent)')!r}"
                            for k in sorted(set(value) | set(old)) if old.get(k) != value.get(k)]
        elif old != value:
            differences.append(f"{part}: checkpoint {old!r} vs now {value!r}")
    if differences:
        shown = "; ".join(differences[:6]) + (f"; ... ({len(differences)} in all)" if len(differences) > 6 else "")
        raise ckpt.CheckpointError(f"resume checkpoint {stem} was written for another run ({shown}); "
                                   "resume with the same config, or delete it to start over")



def save_state(stem, model, best_state, optimizer, generator, callbacks, meta) -> None:
    """Write the whole training state (model, best model, optimizer, random generators, callbacks)
    and ``meta`` as one checkpoint at ``stem``, atomically (:func:`~medsoup.core.checkpoint.save_checkpoint`)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    optim_state = optimizer.state_dict()
    for index, values in optim_state["state"].items():
        for name, value in values.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    tensors["rng.data"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    for i, callback in enumerate(callbacks):
        tensors.update({f"callback{i}.{k}": v for k, v in callback.state_dict().items()})
    ckpt.save_checkpoint(stem, tensors, meta)


def read_resume_state(stem) -> tuple[dict, dict] | None:
    """The resume checkpoint's ``(tensors, metadata)``; None when there is none. An unreadable one
    (corrupted on disk) is set aside with a warning, so that training starts over instead of failing
    for good."""
    if stem is None or not ckpt.exists(stem):
        return None
    try:
        return ckpt.load_checkpoint(stem)
    except ckpt.CheckpointError as error:
        aside = ckpt.set_aside(stem)
        warnings.warn(f"{error}; it was moved to {aside} and training starts from the first epoch", stacklevel=3)
        return None


def restore_state(tensors, model, optimizer, generator, callbacks) -> dict:
    """Load the tensors of :func:`save_state` back into the model, optimizer, generators and
    callbacks; return the best model's state."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    state = optimizer.state_dict()
    restored: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            restored.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": restored, "param_groups": state["param_groups"]})
    if tensors["rng.data"].shape != generator.get_state().shape:
        raise ckpt.CheckpointError(f"the resume checkpoint's data generator state does not fit this run's "
                                   f"{generator.device.type} generator (written on another device type); resume "
                                   "on the device type it was written on, or delete it to start over")
    generator.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    for i, callback in enumerate(callbacks):
        prefix = f"callback{i}."
        callback.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return best
