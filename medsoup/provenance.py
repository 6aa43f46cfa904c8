"""Where a number came from: code version, package versions and machine."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

import medsoup

PACKAGES = ("torch", "torchvision", "timm", "medmnist", "numpy", "scikit-learn", "safetensors")


@lru_cache(maxsize=None)
def code_version() -> str:
    """``<version>+<12 hex digits>``: the package version and a hash of every medsoup source file.

    Any change to the library's code changes it, so cached runs are never reused across code
    changes that could alter their numbers.
    """
    digest = hashlib.sha256()
    root = Path(medsoup.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{medsoup.__version__}+{digest.hexdigest()[:12]}"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict[str, str | int]:
    """Processor, core count, threads torch uses, and the accelerator if any."""
    record: dict[str, str | int] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                                    "cpu_count": os.cpu_count() or 0, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
    return record
