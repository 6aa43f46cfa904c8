"""The run layer: a :class:`RunConfig` in, a cached, resumable :class:`RunResult` out.

- :mod:`medsoup.runs.store`: run configs, the run cache keyed on config and code, ``run``/``run_many``;
- :mod:`medsoup.runs.provenance`: code version, package versions and machine of a result;
- :mod:`medsoup.runs.profiles`: the ``smoke``/``cpu``/``paper`` profiles and settings tables.

The run layer reaches algorithms only through the string tables of :mod:`medsoup.runs.store`
(``CALLBACKS``, ``BUILDERS``), so a run's key names exactly the modules it runs.
"""

from medsoup.runs.store import RunConfig, RunResult, cache_root, clear_run, run, run_key, run_many

__all__ = ["RunConfig", "RunResult", "cache_root", "clear_run", "run", "run_key", "run_many"]
