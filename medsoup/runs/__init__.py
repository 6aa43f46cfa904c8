"""The run layer: a :class:`RunConfig` in, a cached, resumable :class:`RunResult` out.

- :mod:`medsoup.runs.store`: run configs, the run cache keyed on config and code, ``run``/``run_many``;
- :mod:`medsoup.runs.provenance`: code version, package versions and machine of a result;
- :mod:`medsoup.runs.builders`: the models a run can start from besides ``create_model`` (MedMerge's);
- :mod:`medsoup.runs.cli`: ``python -m medsoup.runs list|show|diff|rm`` over the run store;
- :mod:`medsoup.runs.profiles`: the ``smoke``/``cpu``/``paper`` profiles and ``settings``, which
  resolves a chapter's settings table (the tables live in :mod:`medsoup.chapters`);
- :mod:`medsoup.runs.results`: the results file every notebook writes (one envelope, long rows),
  and where: only the reference run writes ``results/<stem>/<profile>.json``.

The run layer reaches algorithms only through the string tables of :mod:`medsoup.runs.store`
(``CALLBACKS``, ``BUILDERS``), so a run's key names exactly the modules it runs.
"""

from importlib import import_module

#: Re-exported from :mod:`medsoup.runs.store`, loaded on first use so that ``python -m medsoup.runs``
#: (and a light submodule) starts without importing torch.
_STORE_NAMES = ("RunConfig", "RunResult", "cache_root", "clear_run", "run", "run_key", "run_many")
__all__ = list(_STORE_NAMES)


def __getattr__(name: str):
    if name in _STORE_NAMES:
        return getattr(import_module("medsoup.runs.store"), name)
    raise AttributeError(f"module 'medsoup.runs' has no attribute {name!r}")
