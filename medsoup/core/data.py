"""MedMNIST on the training device: files, checks, splits and batches.

Everything about a dataset (task, labels, channels, split sizes, URLs, MD5s) is read from
``medmnist.INFO``; nothing is retyped here. A split is one ``uint8`` tensor resident on the
device; batches are sliced from it and normalised/augmented as tensors (see
:mod:`medsoup.core.augment`), so the training loop never touches PIL or DataLoader workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from medmnist import INFO

from medsoup.core.augment import augment_batch, draw_device, normalise
from medsoup.core.checkpoint import writer_tag, written_by_dead_process
from medsoup.core.paths import project_folder

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
DATA_ENV = "MEDSOUP_DATA"
DATASETS = tuple(sorted(flag for flag in INFO if not flag.endswith("3d")))


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupted, or cannot be obtained."""


def check_dataset(name: str, size: int = 28) -> dict:
    """Return ``medmnist.INFO[name]`` after checking that ``name`` and ``size`` are valid."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid 2D MedMNIST datasets: {', '.join(DATASETS)}")
    if size not in SIZES:
        raise ValueError(f"unknown image size {size!r} for {name}; valid sizes: {SIZES}")
    return INFO[name]


def task_of(name: str) -> str:
    """Task kind used by medsoup: 'multi-class', 'binary', 'multi-label' or 'ordinal'.

    Ordinal tasks (RetinaMNIST) are trained and evaluated as multi-class, as in MedMNIST v2.
    """
    task = check_dataset(name)["task"]
    return {"multi-class": "multi-class", "binary-class": "binary",
            "multi-label, binary-class": "multi-label", "ordinal-regression": "ordinal"}[task]


#: ``data/`` of the checkout medsoup is used from (so notebooks find it from any folder), or
#: ``./data`` for an installed package used outside a checkout.
DEFAULT_ROOT = project_folder("data")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$MEDSOUP_DATA``, else :data:`DEFAULT_ROOT`."""
    return Path(root if root is not None else os.environ.get(DATA_ENV, DEFAULT_ROOT)).expanduser()


def file_name(name: str, size: int = 28) -> str:
    """The official file name: ``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` otherwise."""
    check_dataset(name, size)
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def _info_suffix(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def official_md5(name: str, size: int = 28) -> str:
    return check_dataset(name, size)[f"MD5{_info_suffix(size)}"]


def official_url(name: str, size: int = 28) -> str:
    return check_dataset(name, size)[f"url{_info_suffix(size)}"]


def md5_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_md5(path: Path, expected: str) -> None:
    """Raise :class:`DatasetError` unless ``path`` has MD5 ``expected`` (cached per mtime/size)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    actual = _VERIFIED.get(key) or md5_of(path)
    if actual != expected:
        raise DatasetError(
            f"{path} has MD5 {actual}, expected the official {expected}. The file is corrupted, "
            "truncated or not the official MedMNIST file; it was not used and not changed. "
            "Delete it to download it again, or replace it with the official file.")
    _VERIFIED[key] = actual


def _download_with_medmnist(name: str, size: int, folder: Path) -> None:
    """Download ``file_name(name, size)`` into ``folder`` through medmnist (torchvision, MD5-checked)."""
    import medmnist

    dataset_class = getattr(medmnist, INFO[name]["python_class"])
    dataset_class(split="val", download=True, root=str(folder), size=size)


def ensure_file(name: str, size: int = 28, root: str | os.PathLike | None = None,
                download: bool = True) -> Path:
    """Path of the verified official file, downloading it first if it is missing.

    The download goes to a temporary folder inside the data folder and is moved into place only
    after its MD5 matches, so an interrupted download never leaves a file under the official name.
    A download that fails (offline, say) leaves nothing behind, not even the data folder if it had
    to be made (a mistyped ``$MEDSOUP_DATA`` stays absent), and raises :class:`DatasetError` with
    one line naming the folder, the file and ``$MEDSOUP_DATA``.
    """
    folder = data_root(root)
    path = folder / file_name(name, size)
    expected = official_md5(name, size)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"the data folder {folder} is a file, not a folder; point ${DATA_ENV} (or root=) "
                           "at the folder that holds the MedMNIST .npz files")
    if path.exists() and not path.is_file():
        raise DatasetError(f"{path} is not a file (a folder?); put the official {path.name} there instead")
    if path.exists():
        verify_md5(path, expected)
        return path
    if not download:
        raise DatasetError(_missing_message(name, size, folder, "download=False"))
    made = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_downloads(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".download-{name}-{writer_tag()}-", dir=folder))
    try:
        try:
            _download_with_medmnist(name, size, staging)
        except Exception as error:  # medmnist wraps every network failure in a RuntimeError of many lines
            reason = f"{'the folder does not exist; ' if made else ''}download failed: {_first_cause(error)}"
            raise DatasetError(_missing_message(name, size, folder, reason)) from None
        fetched = staging / path.name
        verify_md5(fetched, expected)
        os.replace(fetched, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not path.exists():
            for made_folder in made:  # made for this download; kept if something else was put there
                with contextlib.suppress(OSError):
                    made_folder.rmdir()
    return path


def _first_cause(error: BaseException) -> str:
    """The exception at the root of ``error``'s chain (medmnist's RuntimeError wraps the network
    error), as one line: ``URLError: <urlopen error [Errno -2] Name or service not known>``."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]


def remove_stale_downloads(folder: Path) -> None:
    """Delete the staging folders ``.download-<name>-<writer_tag>-*`` of downloads whose process was killed."""
    for staging in folder.glob(".download-*"):
        parts = staging.name.split("-")
        if staging.is_dir() and len(parts) == 4 and written_by_dead_process(parts[2]):
            shutil.rmtree(staging, ignore_errors=True)


def _missing_message(name: str, size: int, folder: Path, reason: str) -> str:
    """One line: the file, the data folder, why it could not be fetched, and what to do."""
    return (f"{file_name(name, size)} is not in the data folder {folder.resolve()} ({reason}): put the official "
            f"file there ({official_url(name, size)}, MD5 {official_md5(name, size)}) or point ${DATA_ENV} "
            "at a folder that holds it")


def read_npz(path: Path, name: str, size: int) -> dict[str, np.ndarray]:
    """Read the six arrays of a MedMNIST file without pickle, checking their shapes."""
    info = INFO[name]
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as error:
        raise DatasetError(f"{path} is not a readable MedMNIST .npz file ({error}); it was not changed") from None
    for split in SPLITS:
        for kind in ("images", "labels"):
            if f"{split}_{kind}" not in arrays:
                raise DatasetError(f"{path} lacks the array {split}_{kind}; found {sorted(arrays)}")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        spatial = (size, size) if info["n_channels"] == 1 else (size, size, 3)
        if images.dtype != np.uint8 or images.shape[1:] != spatial or len(labels) != len(images):
            raise DatasetError(f"{path}: {split}_images has shape {images.shape} and dtype {images.dtype}, "
                               f"expected (N, {', '.join(map(str, spatial))}) uint8 with {len(labels)} labels")
    return arrays


def check_train_subset(n: int | None) -> None:
    """``train_subset`` is None (the whole split) or a whole number of images >= 1."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"train_subset must be None (every training image) or a whole number >= 1, got {n!r}")


def class_quotas(counts: list[int], n: int) -> list[int]:
    """How many of ``n`` samples each class gets: largest-remainder (Hamilton) allocation of the
    shares ``counts[c] * n / sum(counts)``, summing to exactly ``n``.

    Each class first gets the floor of its share; when ``n`` covers every class, a class whose
    share is below one is raised to one (every class stays represented) and the samples this adds
    are taken back, one at a time, from the classes with more than one, smallest remainder first;
    the samples still missing go, one at a time, to the largest remainders. No class gets more than
    it has. Ties go to the class listed first. Integer arithmetic, so the result is exact.
    """
    total = sum(counts)
    if not 0 < n <= total:
        raise ValueError(f"cannot take {n} of {total} samples: n must be between 1 and {total}")
    quotas = [c * n // total for c in counts]
    remainders = [c * n % total for c in counts]
    if n >= len(counts):
        quotas = [max(q, 1) for q in quotas]
    by_remainder = sorted(range(len(counts)), key=lambda c: (-remainders[c], c))
    while sum(quotas) > n:
        for c in reversed(by_remainder):
            if quotas[c] > 1 and sum(quotas) > n:
                quotas[c] -= 1
    while sum(quotas) < n:
        for c in by_remainder:
            if quotas[c] < counts[c] and sum(quotas) < n:
                quotas[c] += 1
    return quotas


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of a class-stratified subset of exactly ``n`` samples (by the first label column).

    Each class keeps its share of ``n`` by :func:`class_quotas` (at least one sample per class
    when ``n`` is at least the number of classes); within a class the samples are a random draw.
    The result is sorted and depends only on ``labels``, ``n`` and ``seed``. Multi-label datasets
    are stratified by their first label.
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    keys = labels[:, 0] if labels.ndim > 1 else labels
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    classes, counts = torch.unique(keys, return_counts=True)
    quotas = class_quotas(counts.tolist(), n)
    for cls, quota in zip(classes.tolist(), quotas):
        members = torch.nonzero(keys == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    return torch.sort(torch.cat(chosen)).values


@dataclass
class Split:
    """One split resident on a device: ``images`` uint8 (N, C, H, W) and integer ``labels`` (N, L)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class MedData:
    """A MedMNIST dataset held as tensors, with its metadata from ``medmnist.INFO``.

    ``size`` is the side of the images :meth:`batches` yields (the model's input); the stored
    images may be smaller or larger (a file of another size, see :func:`load_dataset`), and are
    then resized batch by batch on their device.
    """

    name: str
    size: int
    task: str
    label_names: tuple[str, ...]
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def in_chans(self) -> int:
        return self.splits["train"].images.shape[1]

    @property
    def device(self) -> torch.device:
        return self.splits["train"].images.device

    def to(self, device: str | torch.device) -> "MedData":
        moved = {key: Split(s.images.to(device), s.labels.to(device)) for key, s in self.splits.items()}
        return MedData(self.name, self.size, self.task, self.label_names, moved)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Loss targets: float (N, L) for multi-label, class indices (N,) otherwise."""
        return labels.float() if self.task == "multi-label" else labels[:, 0].long()

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, augment: str = "none",
                in_chans: int | None = None, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, targets)``: float normalised images, augmented as tensors.

        ``generator`` (a seeded :class:`torch.Generator`) makes shuffling and augmentation
        reproducible; its random numbers are drawn on its own device (a CPU generator gives the
        same order on every device; one on the data's CUDA device needs no host copy or wait).
        ``in_chans`` repeats grayscale to 3 channels when a model needs it. Images stored at
        another side than :attr:`size` are resized to it (bilinear) before augmentation.
        """
        data = self.splits[split]
        n = len(data)
        order = (torch.randperm(n, generator=generator, device=draw_device(generator)).to(data.images.device)
                 if shuffle else None)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            index = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
            images = resize(normalise(data.images[index], in_chans), self.size)
            if augment != "none":
                images = augment_batch(images, augment, generator)
            yield images, self.targets(data.labels[index])


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float (B, C, H, W) images resized to ``size`` x ``size`` (bilinear; antialiased when
    shrinking); returned unchanged when they already have that side."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = images.shape[-1] > size
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=shrink)


def from_arrays(name: str, size: int, arrays: dict[str, np.ndarray]) -> MedData:
    """Build :class:`MedData` from the six official arrays (images NHW or NHWC uint8)."""
    info = check_dataset(name, size)
    splits = {}
    for split in SPLITS:
        images = torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_images"]))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
        labels = torch.from_numpy(np.asarray(arrays[f"{split}_labels"]).astype(np.int64)).reshape(len(images), -1)
        splits[split] = Split(images, labels)
    names = tuple(info["label"][key] for key in sorted(info["label"], key=int))
    return MedData(name, size, task_of(name), names, splits)


def load_dataset(name: str, size: int = 28, *, root: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", train_subset: int | None = None,
                 subset_seed: int = 0, download: bool = True, file_size: int | None = None) -> MedData:
    """Load a verified MedMNIST dataset onto ``device``.

    ``train_subset`` keeps a class-stratified subset of that many training images (validation and
    test stay whole, so numbers remain comparable with published ones). ``file_size`` reads the
    official file of that size instead of ``size``'s and resizes each batch to ``size`` on the
    device (e.g. the offline 28 px files shown to a 224 px ImageNet model); None reads ``size``'s file.
    """
    check_train_subset(train_subset)
    stored = size if file_size is None else file_size
    check_dataset(name, size)
    path = ensure_file(name, stored, root, download)
    data = from_arrays(name, stored, read_npz(path, name, stored))
    data.size = size
    if train_subset is not None:
        train = data.splits["train"]
        keep = stratified_indices(train.labels, train_subset, subset_seed)
        data.splits["train"] = Split(train.images[keep], train.labels[keep])
    return data.to(device)


def synthetic_arrays(name: str, size: int = 28, n_per_split: int | dict | None = None,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays with the official per-image shape, dtype and label layout of ``name``.

    Used to test code paths for datasets that cannot be downloaded here. ``n_per_split``
    defaults to the official split sizes.
    """
    info = check_dataset(name, size)
    rng = np.random.default_rng(seed)
    n_labels = len(info["label"])
    arrays = {}
    for split in SPLITS:
        n = info["n_samples"][split] if n_per_split is None else (
            n_per_split[split] if isinstance(n_per_split, dict) else n_per_split)
        shape = (n, size, size) if info["n_channels"] == 1 else (n, size, size, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if task_of(name) == "multi-label":
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, n_labels), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = (np.arange(n) % n_labels).astype(np.uint8).reshape(n, 1)
    return arrays
