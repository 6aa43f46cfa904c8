"""Preflight: before a profile's notebooks run, every dataset file and ImageNet weight file the
chapters' settings need at that profile is looked up, in seconds, and a missing one that cannot be
downloaded stops the run with the whole list (``python -m medsoup.book execute --profile paper``
runs it first and exits 1; ``python -m medsoup.book.preflight --profile paper`` prints the report).

What is looked up, without reading or downloading anything:

* datasets: the official MedMNIST file name (:func:`medsoup.core.data.file_name`) in the data
  folder (``$MEDSOUP_DATA``, :func:`medsoup.core.data.data_root`); its MD5 is checked when it is
  loaded. Downloadable when its official URL's host accepts a connection;
* ImageNet weights (``create_model(..., pretrained="imagenet")``): EfficientNet-Lite0 from its
  installed package (:mod:`medsoup.core.pretrained`, offline); every other model from timm's
  Hugging Face repository (``pretrained_cfg.hf_hub_id``) in the local hub cache (``HF_HOME``) or
  timm's older torch-hub cache. Downloadable when ``HF_HUB_OFFLINE`` is unset and
  ``huggingface.co`` accepts a connection.

The needs are read from each chapter's settings table (:data:`CHAPTERS`), so a profile added there
(e.g. a ``gpu`` one) is checked by the same code.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

from medsoup.chapters.baselines import BASELINE
from medsoup.chapters.fissionfusion import FISSIONFUSION, SOURCE
from medsoup.chapters.inmerge import INMERGE
from medsoup.chapters.medmerge import MEDMERGE
from medsoup.core.data import data_root, file_name, official_url
from medsoup.core.pretrained import LITE0_MODELS, PretrainedWeightsError, lite0_source
from medsoup.runs.profiles import resolve_profile

HF_HOST = "huggingface.co"


class PreflightError(RuntimeError):
    """Something a profile needs is missing and cannot be downloaded; the message lists all of it."""


@dataclass(frozen=True)
class Need:
    """One file a profile needs: a dataset (``kind="dataset"``, MedMNIST flag and size) or the
    ImageNet weights of a model (``kind="weights"``, timm name, ``size`` None)."""

    kind: str
    name: str
    size: int | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.size} px" if self.kind == "dataset" else f"ImageNet weights of {self.name}"


@dataclass(frozen=True)
class Status:
    """Where a :class:`Need` stands: ``present`` (``where``: its path or cache), or missing and
    ``downloadable`` or not (``why``: from where, or why not)."""

    need: Need
    chapters: tuple[str, ...]
    present: bool
    downloadable: bool
    where: str


def _datasets(names: Iterable[str], size: int) -> list[Need]:
    return [Need("dataset", name, size) for name in names]


def _weights(*models: str) -> list[Need]:
    return [Need("weights", model) for model in models]


def _baselines(s: dict) -> list[Need]:
    return _datasets(s["datasets"], s["size"])


def _inmerge(s: dict) -> list[Need]:
    datasets = [*s["datasets"], *s["ablation_datasets"], s["architecture_dataset"]]
    datasets += ["chestmnist"] if s["chest"] else []
    models = [s["model"]] if s["init"] == "imagenet" else []
    models += [name for name, _, init in s["architectures"] if init == "imagenet"]
    return _datasets(datasets, s["size"]) + _weights(*models)


def _fissionfusion(s: dict) -> list[Need]:
    if s["pretrain_epochs"] == 0:  # the paper's ImageNet start (pretrain_run)
        return _datasets(s["datasets"], s["size"]) + _weights(s["model"])
    return _datasets([*s["datasets"], *(SOURCE[d] for d in s["datasets"])], s["size"])


def _medmerge(s: dict) -> list[Need]:
    targets = [*s["targets"], *s["ablation_targets"]]
    sources = {source for t in targets for source in s["sources"][t]}
    imagenet = "imagenet" in sources or s["source_recipe"].get("init") == "imagenet"
    return _datasets(targets + sorted(sources - {"imagenet"}), s["size"]) + (_weights(s["model"]) if imagenet else [])


#: Chapter -> (its settings table, what a profile's settings need). Notebooks ``0*`` are the
#: baselines' quickstart, ``1*`` InMerge, ``2*`` FissionFusion, ``3*`` MedMerge (see :func:`chapters_of`).
CHAPTERS: dict[str, tuple[dict, Callable[[dict], list[Need]]]] = {
    "baselines": (BASELINE, _baselines), "inmerge": (INMERGE, _inmerge),
    "fissionfusion": (FISSIONFUSION, _fissionfusion), "medmerge": (MEDMERGE, _medmerge)}
_PREFIX = {"0": "baselines", "1": "inmerge", "2": "fissionfusion", "3": "medmerge"}


def chapters_of(notebooks: Iterable[str]) -> list[str]:
    """The chapters whose settings the notebooks (stems such as ``20_fissionfusion``) read."""
    return sorted({_PREFIX[stem[0]] for stem in notebooks if stem[:1] in _PREFIX})


def profile_needs(profile: str, chapters: Iterable[str] | None = None) -> dict[Need, tuple[str, ...]]:
    """Each file ``chapters`` (default: all) need at ``profile``, with the chapters that need it."""
    needs: dict[Need, list[str]] = {}
    for chapter in CHAPTERS if chapters is None else chapters:
        table, needs_of = CHAPTERS[chapter]
        for need in needs_of(table[resolve_profile(profile)]):
            users = needs.setdefault(need, [])
            users += [chapter] if chapter not in users else []
    return {need: tuple(users) for need, users in needs.items()}


def reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """Whether ``host`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def _cached_weights(model: str) -> str | None:
    """The local file timm would load ``model``'s ImageNet weights from, or None."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg
    from timm.models._hub import check_cached_file

    config = get_pretrained_cfg(model)
    if config is None:
        return None
    if config.hf_hub_id:
        for filename in (config.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            found = filename and try_to_load_from_cache(config.hf_hub_id, filename)
            if isinstance(found, str):
                return found
    return config.url if config.url and check_cached_file(config.url) else None


def check_need(need: Need, chapters: tuple[str, ...], root=None,
               online: Callable[[str], bool] | None = None) -> Status:
    """The :class:`Status` of one need (``online(host)``, default :func:`reachable`, says whether a
    host can be reached)."""
    online = online or reachable
    if need.kind == "dataset":
        path = data_root(root) / file_name(need.name, need.size)
        if path.is_file():
            return Status(need, chapters, True, False, str(path))
        host = urlparse(official_url(need.name, need.size)).hostname or ""
        if online(host):
            return Status(need, chapters, False, True, f"will be downloaded from {host} into {path.parent}")
        return Status(need, chapters, False, False, f"not in {path.parent}, and {host} cannot be reached")
    if need.name in LITE0_MODELS:
        try:
            return Status(need, chapters, True, False, str(lite0_source()))
        except PretrainedWeightsError as error:
            return Status(need, chapters, False, False, str(error))
    cached = _cached_weights(need.name)
    if cached:
        return Status(need, chapters, True, False, cached)
    if hub_offline():
        return Status(need, chapters, False, False, "not in the Hugging Face cache, and HF_HUB_OFFLINE is set")
    if online(HF_HOST):
        return Status(need, chapters, False, True, f"will be downloaded from {HF_HOST} (timm)")
    return Status(need, chapters, False, False, f"not in the Hugging Face cache, and {HF_HOST} cannot be reached")


def preflight(profile: str, chapters: Iterable[str] | None = None, root=None,
              online: Callable[[str], bool] | None = None) -> list[Status]:
    """The status of everything ``chapters`` (default: all) need at ``profile``; each host is probed once."""
    probed: dict[str, bool] = {}

    def once(host: str) -> bool:
        if host not in probed:
            probed[host] = (online or reachable)(host)
        return probed[host]

    return [check_need(need, users, root, once) for need, users in profile_needs(profile, chapters).items()]


def report(profile: str, statuses: list[Status]) -> str:
    """The preflight's text: one line per missing item (downloadable or not), then a summary."""
    lines = [f"{'missing, downloadable' if s.downloadable else 'MISSING'}: {s.need} (for {', '.join(s.chapters)}): "
             f"{s.where}" for s in statuses if not s.present]
    blocked = sum(not s.present and not s.downloadable for s in statuses)
    lines.append(f"preflight {profile}: {len(statuses)} files needed, {sum(s.present for s in statuses)} present, "
                 f"{sum(s.downloadable for s in statuses)} to download, {blocked} missing and not downloadable")
    return "\n".join(lines)


def check(profile: str, chapters: Iterable[str] | None = None, root=None,
          online: Callable[[str], bool] | None = None) -> list[Status]:
    """Run :func:`preflight`; raise :class:`PreflightError` with the report if anything needed is
    missing and not downloadable."""
    statuses = preflight(profile, chapters, root, online)
    if any(not s.present and not s.downloadable for s in statuses):
        raise PreflightError(report(profile, statuses))
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsoup.book.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="paper", help="smoke, cpu, paper or auto")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="notebook stems, e.g. 20_fissionfusion")
    args = parser.parse_args(argv)
    chapters = chapters_of(args.only) if args.only else None
    statuses = preflight(args.profile, chapters)
    print(report(resolve_profile(args.profile), statuses))
    return 1 if any(not s.present and not s.downloadable for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
