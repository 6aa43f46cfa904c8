"""Model builders of the run layer: how a run whose model is not a plain ``create_model`` starts.

:data:`medsoup.runs.store.BUILDERS` names each builder as "module:attribute"; a builder has
``build(config, data, cache) -> nn.Module`` (the model training starts from) and
``export(model, config, data) -> (nn.Module, architecture)`` (the plain model stored with the run).
This module is hashed into the key of every run that uses one of its builders, so it holds only
the adapters, never a chapter's settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsoup.core.checkpoint import load_checkpoint
from medsoup.core.models import create_model
from medsoup.merging.medmerge import MedMergeModel, bake, merged_keys, zeroed_kernels
from medsoup.merging.statedict import StateDict
from medsoup.runs.store import RunConfig, run


def source_state(spec: Any, architecture: dict, cache: str | os.PathLike | None = None,
                 like: StateDict | None = None) -> dict[str, torch.Tensor]:
    """The state dict of one source: a :class:`~medsoup.runs.store.RunConfig` (trained if not cached),
    ``"imagenet"``, ``"zeros"`` (``like`` with its kernels zeroed) or a checkpoint path."""
    if isinstance(spec, RunConfig):
        return run(spec, cache, progress=False).load_state()
    if spec == "imagenet":
        arch = architecture
        return create_model(arch["name"], arch["num_classes"], arch["in_chans"], arch["img_size"],
                            pretrained="imagenet").state_dict()
    if spec == "zeros":
        if like is None:
            raise ValueError("source_c='zeros' needs source_b (its kernels are zeroed)")
        arch = architecture
        template = create_model(arch["name"], arch["num_classes"], arch["in_chans"], arch["img_size"])
        return zeroed_kernels(like, [k for group in merged_keys(template).values() for k in group])
    if isinstance(spec, (str, Path)):
        return load_checkpoint(spec)[0]
    raise ValueError(f"unknown MedMerge source {spec!r}: give a RunConfig, 'imagenet', 'zeros' or a checkpoint path")


def _source_spec(spec: Any) -> Any:
    """A source as given in ``builder_params``; a RunConfig stored as a dict (e.g. read back from
    a run's config.json) is rebuilt."""
    return RunConfig.from_dict(spec) if isinstance(spec, dict) else spec


class MedMergeBuilder:
    """The run layer's ``"medmerge"`` builder (see :data:`medsoup.runs.store.BUILDERS`).

    ``builder_params``: ``source_b`` and ``source_c`` (a RunConfig, "imagenet", a checkpoint path;
    ``source_c`` may be "zeros"), and optionally ``level`` ("kernel"), ``parametrisation``
    ("sigmoid"), ``bn_trainable`` (True), ``w_scale`` (1: ``w = sigmoid(w_scale * raw)``, see
    :mod:`medsoup.merging.medmerge`), ``w_trainable`` (True; False holds ``w`` at 0.5, the plain average
    of the kernels) and ``bn_source`` ("mean"; "b" or "c": BatchNorm from one source). Train the LP stage
    with ``linear_probe=False``: the model itself decides which tensors are trainable.
    """

    OPTIONS = ("source_b", "source_c", "level", "parametrisation", "bn_trainable", "w_scale", "w_trainable",
               "bn_source")

    @staticmethod
    def build(config, data, cache=None) -> MedMergeModel:
        params = dict(config.builder_params)
        unknown = sorted(set(params) - set(MedMergeBuilder.OPTIONS))
        missing = [k for k in ("source_b", "source_c") if k not in params]
        if unknown or missing:
            raise ValueError(f"medmerge builder_params: unknown {unknown}, missing {missing}; "
                             f"valid: {', '.join(MedMergeBuilder.OPTIONS)}")
        arch = {"name": config.model, "num_classes": data.num_classes, "in_chans": config.in_chans,
                "img_size": config.size}
        state_b = source_state(_source_spec(params["source_b"]), arch, cache)
        state_c = source_state(_source_spec(params["source_c"]), arch, cache, like=state_b)
        torch.manual_seed(config.train.seed)  # the new head does not depend on whether sources were cached
        template = create_model(arch["name"], arch["num_classes"], arch["in_chans"], arch["img_size"])
        return MedMergeModel(template, state_b, state_c, arch, level=params.get("level", "kernel"),
                             parametrisation=params.get("parametrisation", "sigmoid"),
                             bn_trainable=params.get("bn_trainable", True), w_scale=params.get("w_scale", 1.0),
                             w_trainable=params.get("w_trainable", True), bn_source=params.get("bn_source", "mean"))

    @staticmethod
    def export(model: MedMergeModel, config, data) -> tuple[nn.Module, dict]:
        return bake(model), dict(model.architecture)
