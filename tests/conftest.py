"""Shared fixtures: tiny synthetic datasets, real BreastMNIST when available, a run cache per test.

Environment defaults are set before medsoup (and huggingface_hub) are imported: the offline
MedMNIST files in ``../shared/data/medmnist`` when that folder exists (else medsoup's default data
folder), ``HF_HUB_OFFLINE=1`` and one torch thread.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "medmnist"  # the official offline files, where present
if SHARED_DATA.is_dir():
    os.environ.setdefault("MEDSOUP_DATA", str(SHARED_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# One intra-op thread: on a shared 2-core machine OpenMP threads spin against other processes and
# a test can take 10x longer; the numbers do not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from medsoup.core import data as md  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from medsoup.core.train import Callback, TrainConfig  # noqa: E402

#: A training config small and fast enough for unit tests.
TINY_TRAIN = TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=1e-3, augment="medium",
                         device="cpu", seed=0)


class StopAfter(Callback):
    """Interrupts training (like Ctrl-C) at the end of epoch ``epochs``, before its checkpoint."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, model, epoch, record):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


def tiny(name: str = "breastmnist", size: int = 28, n: int = 24, seed: int = 0) -> md.MedData:
    """A synthetic :class:`~medsoup.core.data.MedData` of ``name`` with ``n`` images per split."""
    return md.from_arrays(name, size, md.synthetic_arrays(name, size, n_per_split=n, seed=seed))


def real_file(name: str, size: int = 28) -> Path | None:
    path = md.data_root() / md.file_name(name, size)
    return path if path.exists() else None


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays like the official files (``np.savez_compressed``) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


@pytest.fixture(autouse=True)
def run_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty ``MEDSOUP_RUNS``."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("MEDSOUP_RUNS", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_data() -> md.MedData:
    """24 random 28 px grayscale images per split with BreastMNIST's labels (binary)."""
    return tiny("breastmnist")


@pytest.fixture(scope="session")
def breast() -> md.MedData:
    """The official BreastMNIST (28 px) from ``MEDSOUP_DATA``; skipped where it is absent."""
    if real_file("breastmnist") is None:
        pytest.skip(f"breastmnist.npz is not in {md.data_root()}")
    return md.load_dataset("breastmnist")
