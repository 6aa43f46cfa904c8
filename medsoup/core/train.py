"""``fit``: one training loop for every method in the book.

The loop knows nothing about merging. Methods that act during training are callbacks
(:class:`Callback`) with ``on_step_end(model, step)`` and ``on_epoch_end(model, epoch, record)``
hooks, in the shape of timm's ``ModelEma.update(model, step)``. Validation runs every epoch and
the best epoch (by ``select_metric`` on the validation split) is restored at the end.

With ``checkpoint=<stem>`` the full training state (model, best model, optimizer, random
generators, callback state, history) is written atomically after every epoch and training
resumes from it, giving the same numbers as an uninterrupted run (:mod:`medsoup.core.resume`).

On CUDA a step makes no host wait: batch order and augmentation are drawn by a seeded generator
on the GPU, the loss is summed and checked for NaN/inf on the device, and both are read once per
epoch (:class:`LossWatch`). The CPU path draws from a CPU generator and checks every step, as it
always did, so CPU runs keep their numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsoup.core.augment import AUGMENT_LEVELS
from medsoup.core.data import MedData
from medsoup.core.metrics import METRICS, compute_metrics
from medsoup.core.progress import progress as progress_bar
from medsoup.core.progress import write
from medsoup.core.resume import (check_resume_signature, read_resume_state, restore_state, resume_signature,
                                 save_state)
from medsoup.core.schedules import SCHEDULES, make_schedule

OPTIMIZERS = ("adam", "adamw", "sgd")


class NonFiniteLossError(RuntimeError):
    """The training loss, the weights, the BatchNorm statistics or the outputs became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``fit`` needs besides the model and the data."""

    # Length and batches (fit).
    epochs: int = 10  # passes over the training split, >= 1; every schedule spans epochs * steps per epoch
    batch_size: int = 128  # training images per optimizer step, >= 1; an epoch's last batch may be smaller

    # Optimizer (make_optimizer).
    optimizer: str = "adam"  # one of OPTIMIZERS: "adam", "adamw" (decoupled weight decay), "sgd" (with momentum)
    lr: float = 1e-3  # base learning rate, > 0: the start of every schedule; alpha_1 (the maximum) of "cyclical"
    momentum: float = 0.9  # "sgd" only: momentum factor; ignored by "adam" and "adamw"
    weight_decay: float = 0.0  # >= 0: L2 term added to the gradient ("adam", "sgd") or decoupled decay ("adamw")

    # Learning-rate schedule (medsoup.core.schedules.make_schedule), set by fit before every step.
    schedule: str = "multistep"  # one of SCHEDULES: "constant", "multistep", "cosine", "cyclical" (FGG's)
    milestones: tuple[float, ...] = (0.5, 0.75)  # "multistep" only: fractions of all steps where lr is x gamma
    gamma: float = 0.1  # "multistep" only: factor applied at each milestone
    min_lr: float = 0.0  # "cosine": the rate it ends at; "cyclical": alpha_2, the rate at mid-cycle; else unused
    cycle_epochs: float = 4.0  # "cyclical" only: epochs per cycle, rounded to an even number of steps (cycle_length)

    # What is trained (trainable_parameters, _train_mode); without linear_probe, every parameter that requires grad.
    linear_probe: bool = False  # True: only the head (model.get_classifier()) and, if bn_trainable, BatchNorm
    bn_trainable: bool = True  # with linear_probe. True: BatchNorm trained, statistics updated; False: frozen (eval)

    # Loss and data (fit, medsoup.core.augment).
    augment: str = "medium"  # training augmentation, one of AUGMENT_LEVELS: "none", "minimal", "medium", "heavy"
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1]; ignored by multi-label tasks (BCE loss)

    # Model selection (fit): the validation split after every epoch; highest value wins ("loss": lowest).
    select_metric: str = "auc"  # picks the best epoch: a METRICS name ("acc", "auc", "f1", "recall") or "loss"
    restore_best: bool = True  # True: end with the best epoch's weights; False: the last epoch's (FGG's fission runs)

    # Randomness and hardware. The run layer also seeds the model's initialisation with seed (runs.store.build_model).
    seed: int = 0  # seeds fit's batch-order and augmentation generator and torch's global generator
    device: str = "auto"  # "auto" (CUDA, then MPS, then CPU: resolve_device) or a torch device ("cpu", "cuda:1")
    amp: bool = True  # bfloat16 autocast of the forward pass on CUDA; no effect on other devices
    threads: int = 1  # CPU only: torch's intra-op threads while fit runs (1 and 2 threads sum in different orders,
    # so the count is part of the run: 1 is reproducible anywhere and, several runs side by side, the fastest)

    def __post_init__(self):
        for name, value, valid in (("optimizer", self.optimizer, OPTIMIZERS),
                                   ("schedule", self.schedule, SCHEDULES),
                                   ("augment", self.augment, AUGMENT_LEVELS),
                                   ("select_metric", self.select_metric, METRICS + ("loss",))):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1; got epochs={self.epochs!r}, "
                             f"batch_size={self.batch_size!r}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ValueError(f"threads must be a whole number >= 1, got {self.threads!r}")
        for name, low, high in (("label_smoothing", 0.0, 1.0), ("momentum", 0.0, 1.0), ("weight_decay", 0.0, None),
                                ("min_lr", 0.0, None)):
            _check_number(name, getattr(self, name), low, high)
        for name in ("lr", "gamma", "cycle_epochs"):
            _check_number(name, getattr(self, name), 0.0, None, low_open=True)
        milestones = tuple(self.milestones)
        for value in milestones:
            _check_number("every milestone", value, 0.0, 1.0)
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing fractions of all steps, got {milestones!r}")
        object.__setattr__(self, "milestones", milestones)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(f"device {self.device!r} is not a torch device (\"auto\", \"cpu\", \"cuda\", "
                                 f"\"cuda:1\", \"mps\"): {error}") from None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping, naming any unknown field and listing the valid ones."""
        return cls(**checked_fields(cls, values))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **checked_fields(type(self), changes))


def _check_number(name: str, value: Any, low: float, high: float | None, low_open: bool = False) -> None:
    """Refuse a ``value`` that is not a finite number in [low, high] ((low, high] with ``low_open``)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (high is None or value <= high))
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high is not None else None
        where = f"in {bounds}" if bounds else f"{'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number {where}, got {value!r}")


def checked_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid fields: {', '.join(valid)}")
    return dict(values)


class Callback:
    """Hooks called by :func:`fit`; subclasses override what they need.

    A callback with random state or collected tensors implements ``state_dict`` /
    ``load_state_dict`` (flat name -> tensor) so interrupted runs resume exactly, and
    ``artifacts()`` (name -> state dict) for what the run layer should store with the run.
    On resume ``load_state_dict`` is called before ``on_fit_start``, so ``on_fit_start`` must not
    reset the state it restored.
    """

    def on_fit_start(self, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None: ...
    def on_step_end(self, model: nn.Module, step: int) -> None: ...
    def on_epoch_end(self, model: nn.Module, epoch: int, record: dict) -> None: ...
    def on_fit_end(self, model: nn.Module) -> None: ...
    def state_dict(self) -> dict[str, torch.Tensor]: return {}
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
    def artifacts(self) -> dict[str, dict[str, torch.Tensor]]: return {}


@dataclass
class FitResult:
    """What ``fit`` returns: per-epoch history and the best epoch's metrics."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    val: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    wall_time: float = 0.0
    steps: int = 0
    test_outputs: tuple | None = field(default=None, repr=False)  # (logits, targets) behind ``test``


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def loss_fn(data: MedData, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0):
    """BCE-with-logits for multi-label tasks, cross-entropy otherwise."""
    if data.task == "multi-label":
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def model_in_chans(model: nn.Module, data: MedData) -> int:
    """Input channels the model's first convolution (or patch embedding) expects."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return data.in_chans


@torch.no_grad()
def predict(model: nn.Module, data: MedData, split: str, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` of a whole split, in evaluation mode, weights untouched."""
    was_training = model.training
    model.eval()
    in_chans = model_in_chans(model, data)
    outputs, targets = [], []
    for images, target in data.batches(split, batch_size, in_chans=in_chans):
        outputs.append(model(images).float())
        targets.append(target)
    model.train(was_training)
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model: nn.Module, data: MedData, split: str = "val", batch_size: int = 512) -> dict:
    """Loss and :data:`~medsoup.core.metrics.METRICS` of ``model`` on ``split``.

    Raises :class:`NonFiniteLossError` if an output is NaN or infinite (metrics are undefined then).
    """
    return evaluate_outputs(model, data, split, batch_size)[0]


def evaluate_outputs(model: nn.Module, data: MedData, split: str = "val",
                     batch_size: int = 512) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`evaluate`'s metrics and the ``(logits, targets)`` they were computed from."""
    logits, targets = predict(model, data, split, batch_size)
    if not torch.isfinite(logits).all():
        raise NonFiniteLossError(f"the model's outputs on the {split} split are not finite "
                                 f"({int((~torch.isfinite(logits)).sum())} of {logits.numel()} values)")
    metrics = compute_metrics(data.task, targets, logits)
    metrics["loss"] = float(loss_fn(data, logits, targets))
    return metrics, (logits, targets)


def _score(metrics: dict, name: str) -> float:
    value = -metrics["loss"] if name == "loss" else metrics[name]
    return -math.inf if math.isnan(value) else value


#: A trained model whose validation AUC is below this has learnt (next to) nothing: :func:`fit` warns.
CHANCE_AUC = 0.55


class ChanceLevelWarning(UserWarning):
    """A run finished with a model no better than chance on its validation split."""


def warn_if_at_chance(val: dict, config: TrainConfig) -> None:
    """Warn (:class:`ChanceLevelWarning`) when the validation AUC is below :data:`CHANCE_AUC`: such a
    model ranks images like a coin (a constant classifier scores 0.5), whatever its accuracy."""
    auc = val.get("auc", math.nan)
    if not math.isnan(auc) and auc < CHANCE_AUC:
        warnings.warn(f"the trained model is at chance level on the validation split (AUC {auc:.3f} < "
                      f"{CHANCE_AUC}, accuracy {val.get('acc', math.nan):.3f}): it learnt nothing useful. "
                      f"Check the learning rate ({config.optimizer} at lr {config.lr:g}), epochs and data",
                      ChanceLevelWarning, stacklevel=4)


def trainable_parameters(model: nn.Module, config: TrainConfig) -> list[nn.Parameter]:
    """Parameters to optimise. Linear probing freezes all but the head (and BN if trainable)."""
    if not config.linear_probe:
        return [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.get_classifier().parameters()}
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
          for p in m.parameters()} if config.bn_trainable else set()
    for p in model.parameters():
        p.requires_grad_(id(p) in head or id(p) in bn)
    return [p for p in model.parameters() if p.requires_grad]


def _train_mode(model: nn.Module, config: TrainConfig) -> None:
    model.train()
    if config.linear_probe and not config.bn_trainable:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def make_optimizer(params: Sequence[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def non_finite_entries(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers (BatchNorm statistics) holding NaN or inf."""
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    finite = torch.stack([torch.isfinite(v).all() for v in state.values()]).tolist() if state else []
    return [name for name, ok in zip(state, finite) if not ok]


class LossWatch:
    """The finite-loss check of :func:`fit`.

    Immediate (``deferred=False``): every step's loss is read on the host and a NaN/inf raises at
    once. Deferred: the first non-finite step and its loss are kept on the loss's device
    (``torch.where``, no host read) and :meth:`raise_if_bad` reads them once, at the epoch's end,
    before anything of that epoch is validated or checkpointed. Training numbers are the same
    either way; deferred only reports later (the epoch's remaining steps run on NaN weights).
    """

    def __init__(self, deferred: bool, device: torch.device):
        self.deferred = deferred
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_loss = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, step: int, epoch: int, lr: float) -> None:
        if not self.deferred:
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                                         + _STOPPED.format(lr=lr))
            return
        new = (self.first_step < 0) & ~torch.isfinite(loss)
        self.first_step = torch.where(new, step, self.first_step)
        self.first_loss = torch.where(new, loss.detach().float(), self.first_loss)

    def raise_if_bad(self, epoch: int, lr_at) -> None:
        """Deferred mode: raise :class:`NonFiniteLossError` naming the epoch, the first bad step and its loss."""
        step = int(self.first_step)
        if step >= 0:
            raise NonFiniteLossError(f"loss became {float(self.first_loss)} at epoch {epoch + 1}, step {step} "
                                     "(checked at the end of the epoch); " + _STOPPED.format(lr=lr_at(step)))


_STOPPED = ("training stopped (lr {lr:g}). The last checkpoint written, if any, is left intact; "
            "a lower learning rate usually helps.")


def fit(model: nn.Module, data: MedData, config: TrainConfig, callbacks: Iterable[Callback] = (),
        checkpoint=None, progress: bool = True, deferred_checks: bool | None = None) -> FitResult:
    """Train ``model`` on ``data.splits['train']``; return the history and best-epoch metrics.

    The model ends holding its best-epoch weights (by validation ``config.select_metric``; the
    last epoch's with ``restore_best=False``) and
    ``requires_grad`` flags as they were before the call. Raises :class:`NonFiniteLossError` if
    the loss (checked every step; on CUDA at each epoch's end, see below), the weights or
    BatchNorm statistics (every epoch) or the validation outputs become NaN/inf; the last good epoch's checkpoint (if any) is left intact.
    A checkpoint written for another config, data or model is refused, naming the difference; an
    unreadable (corrupted) one is set aside with a warning and training starts over.

    ``deferred_checks`` (None: True on CUDA, False elsewhere) checks the loss on the device and
    reads the result at each epoch's end instead of after every step (:class:`LossWatch`); the
    error then still names the epoch, the first non-finite step and its loss. Passing True on the
    CPU runs the CUDA path's check there (for tests); the numbers of a finite run do not change.

    On the CPU torch runs with ``config.threads`` intra-op threads while fit runs (the caller's count is
    restored after). A model that ends at chance on the validation split is returned with a
    :class:`ChanceLevelWarning`.
    """
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(config.threads)
    try:
        return _fit(model, data, config, list(callbacks), device, checkpoint, progress, deferred_checks)
    finally:
        torch.set_num_threads(threads)


def _fit(model: nn.Module, data: MedData, config: TrainConfig, callbacks: list[Callback], device: torch.device,
         checkpoint, progress: bool, deferred_checks: bool | None) -> FitResult:
    if data.device != device:
        data = data.to(device)
    model.to(device)
    flags = [p.requires_grad for p in model.parameters()]
    params = trainable_parameters(model, config)
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = make_optimizer(params, config)
    steps_per_epoch = math.ceil(len(data.splits["train"]) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    lr_at = make_schedule(config.schedule, config.lr, total_steps, steps_per_epoch,
                          milestones=config.milestones, gamma=config.gamma, min_lr=config.min_lr,
                          cycle_epochs=config.cycle_epochs)
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(config.seed)
    deferred = device.type == "cuda" if deferred_checks is None else deferred_checks
    torch.manual_seed(config.seed)
    in_chans = model_in_chans(model, data)
    use_amp = config.amp and device.type == "cuda"
    result = FitResult()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_epoch, elapsed = 0, 0.0
    signature = resume_signature(model, data, config)
    resumed = read_resume_state(checkpoint)
    if resumed is not None:
        tensors, meta = resumed
        check_resume_signature(checkpoint, meta.get("signature"), signature)
        best_state = restore_state(tensors, model, optimizer, generator, callbacks)
        start_epoch, elapsed = meta["epochs_done"], meta["wall_time"]
        result.history, result.best_epoch, result.best_score = meta["history"], meta["best_epoch"], meta["best_score"]
    for callback in callbacks:
        callback.on_fit_start(model, steps_per_epoch, total_steps)
    started = time.perf_counter() - elapsed
    try:
        for epoch in range(start_epoch, config.epochs):
            _train_mode(model, config)
            loss_sum = torch.zeros((), device=device)
            watch = LossWatch(deferred, device)
            batches = data.batches("train", config.batch_size, shuffle=True, augment=config.augment,
                                   in_chans=in_chans, generator=generator)
            bar = progress_bar(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                               enabled=progress, leave=False)
            for i, (images, targets) in enumerate(bar):
                step = epoch * steps_per_epoch + i
                lr = lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(images)
                loss = loss_fn(data, logits, targets, config.label_smoothing)
                watch.update(loss, step, epoch, lr)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for callback in callbacks:
                    callback.on_step_end(model, step)
                loss_sum += loss.detach()
            watch.raise_if_bad(epoch, lr_at)
            broken = non_finite_entries(model)
            if broken:
                raise NonFiniteLossError(
                    f"weights or BatchNorm statistics became non-finite in epoch {epoch + 1} "
                    f"({', '.join(broken[:4])}{' ...' if len(broken) > 4 else ''}); " + _STOPPED.format(lr=lr))
            try:
                val = evaluate(model, data, "val")
            except NonFiniteLossError as error:
                raise NonFiniteLossError(f"after epoch {epoch + 1}, {error}; " + _STOPPED.format(lr=lr)) from None
            record = {"epoch": epoch + 1, "train_loss": float(loss_sum) / steps_per_epoch, "lr": lr,
                      **{f"val_{k}": v for k, v in val.items() if k != "auc_per_label"}}
            score = _score(val, config.select_metric)
            if score > result.best_score:
                result.best_epoch, result.best_score = epoch + 1, score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for callback in callbacks:
                callback.on_epoch_end(model, epoch, record)
            record["time"] = time.perf_counter() - started
            result.history.append(record)
            if progress:
                write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, "
                      f"val acc {val['acc']:.4f}, val auc {val['auc']:.4f}")
            if checkpoint is not None:
                save_state(checkpoint, model, best_state, optimizer, generator, callbacks,
                            {"epochs_done": epoch + 1, "wall_time": record["time"], "history": result.history,
                             "best_epoch": result.best_epoch, "best_score": result.best_score,
                             "signature": signature})
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    for callback in callbacks:
        callback.on_fit_end(model)
    if config.restore_best:
        model.load_state_dict(best_state)
    result.val = evaluate(model, data, "val")
    result.test, result.test_outputs = evaluate_outputs(model, data, "test")
    warn_if_at_chance(result.val, config)
    result.wall_time = time.perf_counter() - started
    result.steps = total_steps
    return result
