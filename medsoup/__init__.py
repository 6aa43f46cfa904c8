"""medsoup: model merging for medical image classification (InMerge, FissionFusion, MedMerge).

The package is four layers and two presentation folders; imports run one way, down this list
(checked by the import-linter contract in ``pyproject.toml``):

==============  ===========================================================================
``book/``       execute the notebooks (papermill), build the Jupyter Book, batch reruns
``chapters/``   one module per chapter: settings table, protocol as run configs, its tables
``figures/``    one plotting style, one module per chapter (used by the notebooks)
``runs/``       ``RunConfig`` -> cached, resumable ``RunResult``; provenance; profiles
``merging/``    the papers' algorithms: state-dict arithmetic, soups, FGG, InMerge, MedMerge,
                landscapes, kernel similarity
``core/``       data, augmentation, models, training loop, schedules, metrics, checkpoints,
                BatchNorm tools, statistics, project paths
==============  ===========================================================================

The names a reader meets first are importable from here (loaded on first use, so that
``import medsoup`` stays cheap): :func:`run`, :func:`run_many`, :class:`RunConfig`,
:class:`TrainConfig`, :func:`fit`, :func:`load_dataset`, :func:`create_model`.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "run": "medsoup.runs.store",
    "run_many": "medsoup.runs.store",
    "RunConfig": "medsoup.runs.store",
    "TrainConfig": "medsoup.core.train",
    "fit": "medsoup.core.train",
    "load_dataset": "medsoup.core.data",
    "create_model": "medsoup.core.models",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'medsoup' has no attribute {name!r}")
