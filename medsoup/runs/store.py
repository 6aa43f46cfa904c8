"""Runs: a config in, a stored result out; cached, resumable, and spread over any executor.

A :class:`RunConfig` names the dataset, model, initialisation, training config and any
in-training callbacks. :func:`run` stores its result under ``<cache>/<key>/`` where the key
hashes the config and the code version of the modules that run it (:func:`run_modules`):

* ``result.json``: config, history, best epoch, validation/test metrics, wall time, versions;
* ``model.safetensors``: the final (best-epoch) weights, their architecture in its metadata;
* ``artifacts/<name>.safetensors``: what callbacks collected (e.g. FGG snapshots);
* ``predictions/<name>.safetensors``: per-image test predictions (:data:`PREDICTIONS`) of the final model
  (``model``) and of every artifact that is a state of it (an FGG snapshot, under its artifact's name),
  so that output ensembles and calibration need no evaluation rerun;
* ``resume.safetensors`` while training: the state :func:`~medsoup.core.train.fit` resumes from;
* ``trainings.jsonl``: one line per training started (process, host, time, whether it resumed);
* ``lock``: the lock its one trainer holds (:func:`run_lock`).

Every file is written whole and moved into place (:mod:`medsoup.core.checkpoint`) and
``result.json`` is written last, so a run killed at any instant is either finished or resumes.

A finished run is loaded, an interrupted one resumed, a new one trained. Several processes may share
a cache: one trains a run while the others wait for its lock, then load the result. :func:`run_many` sends
many runs to any ``concurrent.futures.Executor``-like object with ``submit`` (a process pool, a
``dask.distributed.Client``), or runs them in order by default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from medsoup.core import checkpoint as ckpt
from medsoup.core.data import MedData, check_dataset, check_train_subset, load_dataset
from medsoup.core.metrics import probabilities
from medsoup.core.models import check_model_name, create_model
from medsoup.core.progress import progress as progress_bar
from medsoup.core.train import (Callback, TrainConfig, checked_fields, evaluate, evaluate_outputs, fit, predict,
                                resolve_device)
from medsoup.runs.provenance import code_version, machine, package_versions
from medsoup.runs.storage import DEFAULT_CACHE, LOCK_ENV, cache_root, run_lock  # noqa: F401 (re-exported)

#: In-training callbacks by name, as "module:attribute", imported when first used.
CALLBACKS: dict[str, str] = {
    "inmerge": "medsoup.merging.inmerge:InMerge",
    "cycle_snapshots": "medsoup.merging.fgg:CycleSnapshots",
    "swa": "medsoup.merging.swa:SWA",
}
#: Model builders other than ``create_model``, as "module:attribute"; each is an object with
#: ``build(config, data, cache) -> nn.Module`` and ``export(model, config, data) -> (nn.Module, dict)``.
BUILDERS: dict[str, str] = {
    "medmerge": "medsoup.runs.builders:MedMergeBuilder",
}


#: What each ``predictions/<name>.safetensors`` of a run holds, on the test split in its order:
#: ``probabilities`` (N, C; softmax, or sigmoid scores for multi-label) and ``targets`` (N,) or (N, L).
PREDICTIONS = ("probabilities", "targets")


def _resolve(table: dict[str, str], kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(table))}")
    module, attribute = table[name].split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``init`` is None (scratch), "imagenet", a checkpoint path, or another
    RunConfig whose final model initialises this one (trained first if not cached)."""

    # Data (load_dataset) and model (build_model, create_model).
    dataset: str = "pneumoniamnist"  # a 2-D MedMNIST flag (medsoup.core.data.DATASETS)
    size: int = 28  # image side in pixels, one of 28, 64, 128, 224 (MedMNIST+ files <flag>_<size>.npz beyond 28)
    file_size: int | None = None  # None: read size's file; else read this size's file, resized to size on the device
    model: str = "smallcnn"  # "smallcnn" or a timm name of a family in medsoup.core.models.FAMILIES
    in_chans: int = 3  # input channels the model is built with; grayscale images are repeated to 3 when it has 3
    init: Any = None  # None (random), "imagenet", a checkpoint path or a RunConfig (see the class docstring)

    # Training (fit) and what it sees.
    train: TrainConfig = TrainConfig()  # optimizer, schedule, epochs, seed, ...; a dict is turned into a TrainConfig
    train_subset: int | None = None  # None: the whole training split; n: n training images, class-stratified
    callbacks: tuple = ()  # (name, params) pairs: CALLBACKS[name](**params) acts during training (e.g. "inmerge")

    # Model builder: "create" builds with create_model from model/in_chans/size/init; another name in BUILDERS
    # builds (and exports) the model itself from builder_params (e.g. "medmerge" and its two sources).
    builder: str = "create"  # "create" or a name in BUILDERS
    builder_params: dict = field(default_factory=dict)  # the builder's keyword options; {} for "create"

    def __post_init__(self):
        check_dataset(self.dataset, self.size)
        if self.file_size is not None:
            check_dataset(self.dataset, self.file_size)
        check_model_name(self.model)
        check_train_subset(self.train_subset)
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainConfig.from_dict(self.train))
        object.__setattr__(self, "callbacks", tuple((name, dict(params)) for name, params in self.callbacks))
        for name, _ in self.callbacks:
            if name not in CALLBACKS:
                raise ValueError(f"unknown callback {name!r}; valid: {', '.join(sorted(CALLBACKS))}")
        if self.builder != "create" and self.builder not in BUILDERS:
            raise ValueError(f"unknown builder {self.builder!r}; valid: create, {', '.join(sorted(BUILDERS))}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from a flat mapping; unknown fields raise an error listing the valid ones."""
        return cls(**checked_fields(cls, values))

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **checked_fields(type(self), changes))

    def with_train(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, train=self.train.replace(**changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_modules(config: RunConfig) -> tuple[str, ...]:
    """The medsoup modules whose sources can change the numbers of ``config``: the run layer, the
    config's callbacks and builder, and those of the run it starts from (imports follow from these)."""
    modules = {"medsoup.runs.store"} | {CALLBACKS[name].split(":")[0] for name, _ in config.callbacks}
    if config.builder != "create":
        modules.add(BUILDERS[config.builder].split(":")[0])
    if isinstance(config.init, RunConfig):
        modules.update(run_modules(config.init))
    return tuple(sorted(modules))


def canonical_config(config: RunConfig) -> dict[str, Any]:
    """``config.to_dict()`` with an ``init`` checkpoint path replaced by the SHA-256 of the file's
    content, so that replacing the file changes the run key and moving it does not."""
    values = config.to_dict()
    if isinstance(config.init, RunConfig):
        values["init"] = canonical_config(config.init)
    elif config.init not in (None, "imagenet"):
        path = ckpt.checkpoint_path(config.init)
        if not path.is_file():
            raise ckpt.CheckpointError(f"init checkpoint {path} does not exist (or is not a file)")
        values["init"] = {"checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return values


def run_key(config: RunConfig) -> str:
    """16 hex digits of SHA-256 over the :func:`canonical_config` and the code version of its
    :func:`run_modules`."""
    text = json.dumps({"config": canonical_config(config), "code": code_version(run_modules(config))},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunResult:
    """A finished run as stored on disk."""

    key: str
    path: Path
    config: dict
    history: list[dict]
    best_epoch: int
    val: dict
    test: dict
    wall_time: float
    artifacts: list[str]
    predictions: list[str]
    code_version: str
    versions: dict
    machine: dict

    @property
    def model_stem(self) -> Path:
        return self.path / "model"

    def load_state(self) -> dict[str, torch.Tensor]:
        return ckpt.load_checkpoint(self.model_stem)[0]

    def load_model(self) -> nn.Module:
        """The stored final model, rebuilt from its recorded architecture (on the CPU)."""
        state, metadata = ckpt.load_checkpoint(self.model_stem)
        arch = metadata["architecture"]
        model = create_model(arch["name"], arch["num_classes"], arch["in_chans"], arch["img_size"])
        ckpt.load_state_into(model, state)
        return model

    def load_artifact(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.artifacts:
            raise KeyError(f"run {self.key} has no artifact {name!r}; it has: {', '.join(self.artifacts) or 'none'}")
        return ckpt.load_checkpoint(self.path / "artifacts" / name)[0]

    def load_predictions(self, name: str = "model") -> tuple[torch.Tensor, torch.Tensor]:
        """``(probabilities, targets)`` on the test split (:data:`PREDICTIONS`) of the final model
        (``"model"``) or of a model-state artifact (e.g. ``"snapshot_0"``)."""
        if name not in self.predictions:
            raise KeyError(f"run {self.key} has no test predictions {name!r}; it has: "
                           f"{', '.join(self.predictions) or 'none'}")
        tensors = ckpt.load_checkpoint(self.path / "predictions" / name)[0]
        return tensors["probabilities"], tensors["targets"]

    @classmethod
    def load(cls, path: Path) -> "RunResult":
        try:
            record = json.loads((path / "result.json").read_text())
        except json.JSONDecodeError as error:
            raise ckpt.CheckpointError(f"{path / 'result.json'} is not valid JSON ({error}); it was changed "
                                       "by hand or by another program. Delete the run's folder to run it again") from None
        return cls(path=path, **{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name != "path"})


def build_model(config: RunConfig, data: MedData, cache: str | os.PathLike | None = None) -> nn.Module:
    """The model a run starts from (seeded by ``config.train.seed``)."""
    torch.manual_seed(config.train.seed)
    if config.builder != "create":
        return _resolve(BUILDERS, "builder", config.builder).build(config, data, cache)
    pretrained = config.init
    if isinstance(pretrained, RunConfig):
        pretrained = run(pretrained, cache, progress=False).model_stem
        torch.manual_seed(config.train.seed)  # a new head must not depend on whether init was cached
    return create_model(config.model, data.num_classes, config.in_chans, config.size, pretrained)


def export_model(model: nn.Module, config: RunConfig, data: MedData) -> tuple[nn.Module, dict]:
    """The plain model to store and its architecture record."""
    if config.builder != "create":
        return _resolve(BUILDERS, "builder", config.builder).export(model, config, data)
    return model, {"name": config.model, "num_classes": data.num_classes, "in_chans": config.in_chans,
                   "img_size": config.size}


def make_callbacks(config: RunConfig) -> list[Callback]:
    return [_resolve(CALLBACKS, "callback", name)(**params) for name, params in config.callbacks]


def run(config: RunConfig, cache: str | os.PathLike | None = None, progress: bool = True) -> RunResult:
    """Load the stored result of ``config``, resuming or starting training if it is not finished.

    One process trains a run at a time (:func:`run_lock`): another asking for it waits, then loads
    the result, or resumes the training if the first process died.
    """
    key = run_key(config)
    folder = cache_root(cache) / key
    if (folder / "result.json").exists():
        ckpt.remove_checkpoint(folder / "resume")  # left by a kill between result.json and its removal
        return RunResult.load(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with run_lock(folder):
        if (folder / "result.json").exists():  # trained by the process this one waited for
            return RunResult.load(folder)
        return _train(config, key, folder, cache, progress)


def is_state_of(model: nn.Module, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether ``tensors`` is a state of ``model`` (the same keys and shapes), e.g. an FGG snapshot."""
    own = model.state_dict()
    return tensors.keys() == own.keys() and all(tensors[k].shape == own[k].shape for k in own)


def store_predictions(folder: Path, model: nn.Module, data: MedData,
                      states: dict[str, dict[str, torch.Tensor] | None],
                      outputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[str]:
    """Write ``predictions/<name>.safetensors`` (:data:`PREDICTIONS` on the test split) of each state
    loaded into ``model`` (None: the model as it is, first; moved to the data's device); return the names.
    ``outputs``: the test ``(logits, targets)`` of the model as it is, when already computed."""
    model.to(data.device)
    for name, state in states.items():
        if state is not None:
            ckpt.load_state_into(model, state)
        logits, targets = outputs if state is None and outputs is not None else predict(model, data, "test")
        ckpt.save_checkpoint(folder / "predictions" / name,
                             {"probabilities": probabilities(logits, data.task), "targets": targets},
                             {"split": "test"})
    return list(states)


def _train(config: RunConfig, key: str, folder: Path, cache: str | os.PathLike | None,
           progress: bool) -> RunResult:
    """Train ``config`` and store it. A callback with ``finish(model, data)`` gets the final model after
    :func:`~medsoup.core.train.fit` (SWA: its average, BatchNorm recomputed on the training split);
    the validation and test metrics are then those of the finished model."""
    with open(folder / "trainings.jsonl", "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                              "resumed": ckpt.exists(folder / "resume")}) + "\n")
    ckpt.atomic_write_text(folder / "config.json", json.dumps(config.to_dict(), indent=1, default=str))
    device = resolve_device(config.train.device)
    data = load_dataset(config.dataset, config.size, device=device, train_subset=config.train_subset,
                        file_size=config.file_size)
    model = build_model(config, data, cache)
    callbacks = make_callbacks(config)
    fitted = fit(model, data, config.train, callbacks, checkpoint=folder / "resume", progress=progress)
    finishing = [c for c in callbacks if hasattr(c, "finish")]
    for callback in finishing:
        callback.finish(model, data)
    if finishing:
        fitted.val = evaluate(model, data, "val")
        fitted.test, fitted.test_outputs = evaluate_outputs(model, data, "test")
    final, architecture = export_model(model, config, data)
    record = {"key": key, "config": config.to_dict(), "history": fitted.history, "best_epoch": fitted.best_epoch,
              "val": fitted.val, "test": fitted.test, "wall_time": fitted.wall_time,
              "code_version": code_version(run_modules(config)), "versions": package_versions(),
              "machine": {**machine(), "device": str(device)}}
    ckpt.save_checkpoint(folder / "model", final.state_dict(),
                         {"architecture": architecture, "seed": config.train.seed,
                          **{k: record[k] for k in ("key", "config", "val", "test", "wall_time", "code_version", "versions",
                                                    "machine")}})
    artifacts = {}
    for callback in callbacks:
        artifacts.update(callback.artifacts())
    for name, tensors in artifacts.items():
        ckpt.save_checkpoint(folder / "artifacts" / name, tensors, {"run": key})
    record["artifacts"] = sorted(artifacts)
    states = {name: tensors for name, tensors in artifacts.items() if is_state_of(final, tensors)}
    # The final model's test outputs are fit's (or the finished model's) when it is the model stored.
    outputs = fitted.test_outputs if final is model else None
    record["predictions"] = store_predictions(folder, final, data, {"model": None, **states}, outputs)
    ckpt.atomic_write_text(folder / "result.json", json.dumps(record, indent=1, default=str))
    ckpt.remove_checkpoint(folder / "resume")
    return RunResult.load(folder)


def shared_inits(configs: Sequence[RunConfig]) -> list[RunConfig]:
    """The runs ``configs`` start from (their ``init`` RunConfigs, and theirs), each once, deepest first."""
    found: dict[str, RunConfig] = {}
    for config in configs:
        chain = []
        while isinstance(config.init, RunConfig):
            config = config.init
            chain.append(config)
        for init in reversed(chain):
            found.setdefault(run_key(init), init)
    return list(found.values())


def run_many(configs: Sequence[RunConfig], executor=None, cache: str | os.PathLike | None = None,
             progress: bool = True) -> list[RunResult]:
    """Results of ``configs`` in order: sequential by default, else through ``executor.submit``.

    Any ``concurrent.futures.Executor`` works (``ProcessPoolExecutor`` for local processes),
    and so does a ``dask.distributed.Client`` for a cluster. Finished runs come from the cache.
    Runs in threads of one process (``ThreadPoolExecutor``, dask ``processes=False``) share torch's
    global random generator, so only one thread at a time gives reproducible numbers.
    """
    # Through an executor, shared inits go first, so that workers train them side by side rather than
    # all waiting for the one that trains the first.
    todo = list(configs) if executor is None else [*shared_inits(configs), *configs]
    if executor is not None:
        futures = [executor.submit(run, c, str(cache_root(cache).resolve()), False) for c in todo]
    results = []
    with progress_bar(desc="runs", total=len(todo), enabled=progress) as bar:
        for i, config in enumerate(todo):  # the bar names the run waited for
            bar.set_postfix_str(f"{config.dataset} {config.model} seed {config.train.seed}")
            results.append(run(config, cache, progress=False) if executor is None else futures[i].result())
            bar.update()
    return results[len(todo) - len(configs):]


def clear_run(config: RunConfig, cache: str | os.PathLike | None = None) -> None:
    """Delete a run's folder (result, checkpoints, resume state)."""
    shutil.rmtree(cache_root(cache) / run_key(config), ignore_errors=True)
