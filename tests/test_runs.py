"""Runs: config validation, cache keys, reuse, exact resume, determinism, executors, provenance."""

from __future__ import annotations

import json
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from medsoup.core import checkpoint as ckpt
from medsoup.core import data as md
from medsoup.core.train import Callback, NonFiniteLossError, TrainConfig, evaluate
from medsoup.runs import provenance
from medsoup.runs import store as runs
from tests.conftest import TINY_TRAIN, StopAfter, real_file, write_npz

CONFIG = runs.RunConfig(dataset="breastmnist", model="smallcnn", in_chans=1, train_subset=32,
                        train=TINY_TRAIN.replace(epochs=3))


@pytest.fixture(autouse=True)
def breast_file(monkeypatch, tmp_path):
    """Runs read BreastMNIST from MEDSOUP_DATA; without the official file, a synthetic stand-in."""
    if real_file("breastmnist") is not None:
        return
    path = write_npz(tmp_path / "data" / "breastmnist.npz", md.synthetic_arrays("breastmnist", n_per_split=40))
    monkeypatch.setenv("MEDSOUP_DATA", str(path.parent))
    monkeypatch.setattr(md, "official_md5", lambda name, size=28: md.md5_of(path))


def _same(a: runs.RunResult, b: runs.RunResult) -> bool:
    history = lambda r: [{k: v for k, v in h.items() if k != "time"} for h in r.history]  # noqa: E731
    return history(a) == history(b) and a.val == b.val and a.test == b.test and a.best_epoch == b.best_epoch


class EpochLog(Callback):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, model, epoch, record):
        self.epochs.append(epoch)


# ---------------------------------------------------------------- config validation

@pytest.mark.parametrize("changes,pattern", [
    ({"dataset": "mnist"}, "unknown dataset 'mnist'; valid 2D MedMNIST datasets: bloodmnist, breastmnist"),
    ({"size": 32}, "unknown image size 32.*valid sizes"),
    ({"model": "alexnet"}, "unknown model 'alexnet'; valid families: smallcnn, vgg"),
    ({"callbacks": (("ema", {}),)}, "unknown callback 'ema'; valid: cycle_snapshots, inmerge"),
    ({"builder": "magic"}, "unknown builder 'magic'; valid: create, medmerge"),
])
def test_bad_config_values_are_named_with_valid_ones(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        runs.RunConfig(**changes)


def test_unknown_config_fields_are_named():
    with pytest.raises(ValueError, match="unknown RunConfig field.*'?datset'?.*valid fields: dataset, size"):
        runs.RunConfig.from_dict({"datset": "breastmnist"})
    with pytest.raises(ValueError, match="unknown TrainConfig field.*lrate"):
        runs.RunConfig.from_dict({"dataset": "breastmnist", "train": {"lrate": 0.1}})
    config = runs.RunConfig.from_dict({"dataset": "retinamnist", "train": {"epochs": 7}})
    assert isinstance(config.train, TrainConfig) and config.train.epochs == 7
    assert CONFIG.with_train(seed=5).train.seed == 5 and CONFIG.replace(size=64).size == 64


def test_key_depends_on_config_and_code_version(monkeypatch):
    assert runs.run_key(CONFIG) == runs.run_key(runs.RunConfig(**{**CONFIG.__dict__}))
    assert runs.run_key(CONFIG) != runs.run_key(CONFIG.with_train(seed=1))
    assert runs.run_key(CONFIG) != runs.run_key(CONFIG.replace(train_subset=33))
    before = runs.run_key(CONFIG)
    monkeypatch.setattr(runs, "code_version", lambda modules=None: "0.0.0+changed")
    assert runs.run_key(CONFIG) != before


def test_key_hashes_the_sources_that_run_the_config_only():
    plain = provenance.source_closure(runs.run_modules(CONFIG))
    root = Path(provenance.medsoup.__file__).parent
    names = {p.relative_to(root).as_posix() for p in plain}
    assert {"runs/store.py", "core/train.py", "core/data.py", "core/models.py", "core/checkpoint.py",
            "core/augment.py"} <= names
    assert not names & {"core/stats.py", "chapters/comparison.py", "book/build.py", "merging/inmerge.py",
                        "chapters/inmerge.py", "chapters/fissionfusion.py", "runs/profiles.py"}
    merged = CONFIG.replace(init=CONFIG, callbacks=(("inmerge", {"p": 0.3}),))
    assert runs.run_modules(merged) == ("medsoup.merging.inmerge", "medsoup.runs.store")
    assert root / "merging" / "inmerge.py" in provenance.source_closure(runs.run_modules(merged))
    assert runs.run_modules(CONFIG.replace(init=merged)) == ("medsoup.merging.inmerge", "medsoup.runs.store")


def test_code_version_follows_an_edit_of_a_hashed_source(monkeypatch, tmp_path):
    copy = tmp_path / "medsoup"
    shutil.copytree(Path(provenance.medsoup.__file__).parent, copy)
    monkeypatch.setattr(provenance.medsoup, "__file__", str(copy / "__init__.py"))
    provenance.code_version.cache_clear()
    try:
        before = provenance.code_version(("medsoup.runs.store",)), provenance.code_version()
        (copy / "core" / "stats.py").write_text((copy / "core" / "stats.py").read_text() + "\nEDITED = 1\n")
        provenance.code_version.cache_clear()
        after_stats = provenance.code_version(("medsoup.runs.store",)), provenance.code_version()
        (copy / "core" / "train.py").write_text((copy / "core" / "train.py").read_text() + "\nEDITED = 1\n")
        provenance.code_version.cache_clear()
        after_train = provenance.code_version(("medsoup.runs.store",))
    finally:
        provenance.code_version.cache_clear()
    assert after_stats[0] == before[0] and after_stats[1] != before[1]
    assert after_train != before[0]


def test_key_ignores_comments_and_docstrings_and_follows_code(monkeypatch, tmp_path):
    copy = tmp_path / "medsoup"
    shutil.copytree(Path(provenance.medsoup.__file__).parent, copy)
    monkeypatch.setattr(provenance.medsoup, "__file__", str(copy / "__init__.py"))
    train = copy / "core" / "train.py"
    original = train.read_text()
    assert '    """Train ``model``' in original

    def key_after(text: str) -> str:
        train.write_text(text)
        provenance.code_version.cache_clear()
        return runs.run_key(CONFIG)

    try:
        before = key_after(original)
        module_docstring = key_after(original.replace('"""', '"""Edited. ', 1))
        function_docstring = key_after(original.replace('    """Train ``model``', '    """Edited. Train ``model``'))
        comment = key_after(original.replace("\n\n", "\n# an added comment\n\n\n", 1) + "\n# edited\n")
        code = key_after(original + "\nEDITED = 1\n")
    finally:
        provenance.code_version.cache_clear()
    assert module_docstring == before and function_docstring == before and comment == before
    assert code != before
    # the path is hashed with the code: the same source under another name is another version
    (copy / "core" / "moved.py").write_text(original)
    assert provenance.code_digest(copy, [train]) != provenance.code_digest(copy, [copy / "core" / "moved.py"])


def test_docstrings_are_dropped_from_module_class_and_function_only(tmp_path):
    path = tmp_path / "m.py"
    texts = {
        "plain": 'def f():\n    return 1\n\n\nclass C:\n    x = 1\n',
        "documented": '"""Module."""\n# comment\ndef f():\n    """Function."""\n    return 1  # one\n\n\n'
                      'class C:\n    """Class."""\n    x = 1\n',
        "only_a_docstring": 'def f():\n    """Function."""\n\n\nclass C:\n    """Class."""\n',
        "a_string_later": 'def f():\n    x = 1\n    "not a docstring"\n    return 1\n\n\nclass C:\n    x = 1\n',
    }
    dumps = {}
    for name, text in texts.items():
        path.write_text(text)
        dumps[name] = provenance.code_text(path)
    assert dumps["documented"] == dumps["plain"]
    assert "'Function.'" not in dumps["only_a_docstring"] and "Pass" in dumps["only_a_docstring"]
    assert dumps["a_string_later"] != dumps["plain"]


def test_no_run_key_covers_a_settings_table():
    root = Path(provenance.medsoup.__file__).parent
    fgg = CONFIG.replace(callbacks=(("cycle_snapshots", {"cycle_epochs": 2}),))
    medmerge = CONFIG.replace(builder="medmerge")
    for config, module in ((fgg, "merging/fgg.py"), (medmerge, "runs/builders.py")):
        names = {p.relative_to(root).as_posix() for p in provenance.source_closure(runs.run_modules(config))}
        assert module in names
        assert not {n for n in names if n.startswith(("chapters/", "figures/", "book/")) or n == "runs/profiles.py"}


def test_cache_folder_parameter_then_env_then_default(monkeypatch, tmp_path, run_cache):
    assert runs.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert runs.cache_root() == run_cache
    monkeypatch.delenv("MEDSOUP_RUNS")
    assert runs.cache_root() == runs.DEFAULT_CACHE and runs.DEFAULT_CACHE.name == "runs"


def test_code_version_hashes_the_sources():
    version = provenance.code_version()
    assert version.startswith(__import__("medsoup").__version__ + "+") and len(version.split("+")[1]) == 12
    assert {"python", "torch", "timm", "medmnist"} <= set(provenance.package_versions())
    assert provenance.machine()["cpu_count"] >= 1


# ---------------------------------------------------------------- run, cache, resume

def test_run_stores_result_and_reuses_it(monkeypatch, run_cache):
    first = runs.run(CONFIG, progress=False)
    assert first.path == run_cache / runs.run_key(CONFIG)
    names = {p.name for p in first.path.iterdir()}
    assert {"result.json", "config.json", "model.safetensors"} <= names
    assert not any(name.startswith("resume") for name in names)
    assert len(first.history) == 3 and 1 <= first.best_epoch <= 3
    assert json.loads((first.path / "result.json").read_text())["code_version"] == provenance.code_version(("medsoup.runs.store",))
    monkeypatch.setattr(runs, "fit", lambda *a, **k: pytest.fail("a cached run must not train again"))
    again = runs.run(CONFIG, progress=False)
    assert again.key == first.key and _same(first, again)


def test_stored_model_reproduces_the_test_metrics():
    result = runs.run(CONFIG, progress=False)
    model = result.load_model()
    data = md.load_dataset("breastmnist")
    assert evaluate(model, data, "test") == pytest.approx(result.test, rel=1e-6)
    assert set(result.load_state()) == set(model.state_dict())
    with pytest.raises(KeyError, match="no artifact 'snapshots'; it has: none"):
        result.load_artifact("snapshots")


def test_interrupted_run_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path):
    whole = runs.run(CONFIG, cache=tmp_path / "whole", progress=False)
    monkeypatch.setattr(runs, "make_callbacks", lambda config: [StopAfter(3)])
    with pytest.raises(KeyboardInterrupt):
        runs.run(CONFIG, progress=False)
    folder = runs.cache_root() / runs.run_key(CONFIG)
    assert not (folder / "result.json").exists()
    assert ckpt.load_metadata(folder / "resume")["epochs_done"] == 2
    log = EpochLog()
    monkeypatch.setattr(runs, "make_callbacks", lambda config: [log])
    resumed = runs.run(CONFIG, progress=False)
    assert log.epochs == [2]  # epochs 1-2 came from the resume checkpoint
    assert _same(resumed, whole)


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    first = runs.run(CONFIG, cache=tmp_path / "a", progress=False)
    second = runs.run(CONFIG, cache=tmp_path / "b", progress=False)
    assert _same(first, second)
    assert torch.equal(first.load_state()["head.weight"], second.load_state()["head.weight"])


def test_init_from_another_run_trains_it_first(run_cache):
    source = CONFIG.with_train(epochs=1)
    target = CONFIG.replace(init=source, train=CONFIG.train.replace(epochs=1, linear_probe=True, bn_trainable=False))
    result = runs.run(target, progress=False)
    assert (run_cache / runs.run_key(source) / "result.json").exists()
    source_state = runs.run(source).load_state()
    state = result.load_state()
    assert torch.equal(state["features.0.weight"], source_state["features.0.weight"])  # frozen backbone
    assert not torch.equal(state["head.weight"], source_state["head.weight"])


def test_non_finite_run_leaves_no_result():
    config = CONFIG.with_train(lr=1e30, optimizer="sgd", schedule="constant")
    with pytest.raises(NonFiniteLossError):
        runs.run(config, progress=False)
    assert not (runs.cache_root() / runs.run_key(config) / "result.json").exists()


def test_runs_never_unpickle(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)
    runs.run(CONFIG.with_train(epochs=1), progress=False)
    runs.run(CONFIG.with_train(epochs=1), progress=False).load_model()


def test_clear_run():
    result = runs.run(CONFIG.with_train(epochs=1), progress=False)
    runs.clear_run(CONFIG.with_train(epochs=1))
    assert not result.path.exists()


# ---------------------------------------------------------------- executors

def test_run_many_gives_the_same_results_sequentially_and_on_executors(tmp_path):
    from dask.distributed import Client, LocalCluster

    configs = [CONFIG.with_train(epochs=2, seed=s) for s in (0, 1)]
    sequential = runs.run_many(configs, cache=tmp_path / "seq", progress=False)
    assert [r.key for r in sequential] == [runs.run_key(c) for c in configs]
    assert sequential[0].val != sequential[1].val
    with ThreadPoolExecutor(max_workers=1) as pool:
        threaded = runs.run_many(configs, pool, cache=tmp_path / "threads", progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        distributed = runs.run_many(configs, client, cache=tmp_path / "dask", progress=False)
    for seq, thr, dist in zip(sequential, threaded, distributed):
        assert _same(seq, thr) and _same(seq, dist)
        assert dist.path.parent == (tmp_path / "dask").resolve()


def test_stored_test_predictions_are_those_of_the_stored_model():
    """The final model's predictions come from fit's own test pass: the same as a fresh pass over the stored model."""
    from medsoup.core.metrics import probabilities
    from medsoup.core.train import predict

    result = runs.run(CONFIG)
    stored, targets = result.load_predictions()
    data = md.load_dataset(CONFIG.dataset, CONFIG.size, train_subset=CONFIG.train_subset)
    logits, fresh_targets = predict(result.load_model(), data, "test")
    assert torch.equal(targets, fresh_targets)
    assert torch.allclose(stored, probabilities(logits, data.task), atol=1e-6)
