"""Reliability of runs: a kill at any instant never blocks a run, bad input is refused up front."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from medsoup.core import checkpoint as ckpt
from medsoup.core import data as md
from medsoup.core.models import create_model
from medsoup.core.train import NonFiniteLossError
from medsoup.runs import store as runs
from tests.conftest import ROOT, real_file
from tests.test_runs import CONFIG, _same, breast_file  # noqa: F401  (breast_file: autouse fixture)

SHORT = CONFIG.with_train(epochs=2)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no ``except Exception`` catches it)."""


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("resume"))


def _replace_count(monkeypatch, tmp_path) -> int:
    real, calls = os.replace, []
    monkeypatch.setattr(os, "replace", lambda *a: (calls.append(a), real(*a))[1])
    runs.run(SHORT, cache=tmp_path / "count", progress=False)
    monkeypatch.setattr(os, "replace", real)
    return len(calls)


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_kill_at_every_file_move_never_blocks_the_run(monkeypatch, tmp_path, moment):
    """Each ``os.replace`` of a run in turn is interrupted just before or just after it moves its
    file; the next ``run`` completes with the numbers of an uninterrupted run."""
    whole = runs.run(SHORT, cache=tmp_path / "whole", progress=False)
    moves = _replace_count(monkeypatch, tmp_path)
    assert moves >= 5  # config.json, resume per epoch (2), model, result.json
    real = os.replace
    for index in range(moves):
        cache = tmp_path / f"{moment}{index}"
        calls = []

        def interrupted(source, target):
            calls.append(target)
            if len(calls) - 1 == index:
                if moment == "after":
                    real(source, target)
                raise Killed(f"kill {moment} move {index} ({target})")
            return real(source, target)

        monkeypatch.setattr(os, "replace", interrupted)
        with pytest.raises(Killed):
            runs.run(SHORT, cache=cache, progress=False)
        monkeypatch.setattr(os, "replace", real)
        resumed = runs.run(SHORT, cache=cache, progress=False)
        assert _same(resumed, whole), f"kill {moment} move {index}"
        assert _leftovers(resumed.path) == [], f"kill {moment} move {index}"


@pytest.mark.slow
@pytest.mark.skipif(real_file("breastmnist") is None, reason="needs the official breastmnist.npz")
def test_sigkill_at_random_instants_then_the_same_result(tmp_path):
    """A worker process is killed with SIGKILL at random instants of a run, six times; the run
    then finishes with the numbers of an uninterrupted one and no temporary file is left."""
    whole = runs.run(SHORT, cache=tmp_path / "whole", progress=False)
    cache = tmp_path / "killed"
    script = ("import sys; from tests.test_reliability import SHORT; from medsoup.runs import store; "
              "print('ready', flush=True); store.run(SHORT, cache=sys.argv[1], progress=False)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    chooser = random.Random(12)
    for _ in range(6):
        worker = subprocess.Popen([sys.executable, "-c", script, str(cache)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, text=True)
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(chooser.uniform(0.0, 3.0))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
    resumed = runs.run(SHORT, cache=cache, progress=False)
    assert _same(resumed, whole)
    assert _leftovers(resumed.path) == []


def test_a_huge_sgd_step_is_never_cached_as_a_result(run_cache):
    config = SHORT.with_train(optimizer="sgd", lr=1e6, schedule="constant")
    with pytest.raises(NonFiniteLossError, match="lr 1e\\+06"):
        runs.run(config, progress=False)
    assert not (run_cache / runs.run_key(config) / "result.json").exists()


def test_init_checkpoint_is_keyed_by_its_content(tmp_path):
    torch.manual_seed(0)
    path = ckpt.save_checkpoint(tmp_path / "init", create_model("smallcnn", 2, 1).state_dict())
    config = SHORT.with_train(epochs=1).replace(init=str(path))
    first = runs.run(config, progress=False)
    assert runs.run_key(config.replace(init=str(tmp_path / "init"))) == first.key  # the stem names the same file
    moved = path.rename(tmp_path / "moved.safetensors")
    assert runs.run_key(config.replace(init=str(moved))) == first.key  # same content, same key
    torch.manual_seed(1)
    ckpt.save_checkpoint(tmp_path / "init", create_model("smallcnn", 2, 1).state_dict())
    second = runs.run(config, progress=False)
    assert second.key != first.key and second.test != first.test
    with pytest.raises(ckpt.CheckpointError, match="init checkpoint .*nothing.safetensors does not exist"):
        runs.run_key(config.replace(init=str(tmp_path / "nothing")))


@pytest.mark.parametrize("changes,pattern", [
    ({"model": "resnet999"}, "unknown model 'resnet999'; timm models of this family include: .*resnet18"),
    ({"model": "smallcnn2"}, "unknown model 'smallcnn2'; the small CNN is called 'smallcnn'"),
    ({"train_subset": 0}, "train_subset must be None .* got 0"),
    ({"train_subset": -5}, "got -5"),
    ({"train_subset": 2.5}, "got 2.5"),
])
def test_bad_run_configs_are_refused_before_any_folder_exists(run_cache, changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        CONFIG.replace(**changes)
    assert not run_cache.exists()


def test_data_paths_of_the_wrong_kind_are_named(tmp_path):
    folder_file = tmp_path / "data"
    folder_file.write_text("not a folder")
    with pytest.raises(md.DatasetError, match="data folder .*data is a file, not a folder"):
        md.load_dataset("breastmnist", root=folder_file)
    (tmp_path / "other" / "breastmnist.npz").mkdir(parents=True)
    with pytest.raises(md.DatasetError, match="breastmnist.npz is not a file"):
        md.load_dataset("breastmnist", root=tmp_path / "other")
    with pytest.raises(ValueError, match="train_subset"):
        md.load_dataset("breastmnist", train_subset=0)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_staging_folders_of_killed_downloads_are_removed(monkeypatch, tmp_path):
    root = tmp_path / "data"
    dead = root / f".download-dermamnist-{ckpt.writer_tag(_dead_pid())}-abc123"
    dead.mkdir(parents=True)
    (dead / "dermamnist.npz").write_bytes(b"half a download")
    live = root / f".download-dermamnist-{ckpt.writer_tag()}-def456"  # a download under way in this process
    live.mkdir()

    def fail(name, size, folder):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(md, "_download_with_medmnist", fail)
    with pytest.raises(md.DatasetError, match="network unreachable"):
        md.load_dataset("dermamnist", root=root)
    assert sorted(p.name for p in root.iterdir()) == [live.name]


def test_a_result_that_is_not_json_is_named(run_cache):
    result = runs.run(SHORT.with_train(epochs=1), progress=False)
    (result.path / "result.json").write_text("{truncated")
    with pytest.raises(ckpt.CheckpointError, match="result.json is not valid JSON"):
        runs.run(SHORT.with_train(epochs=1), progress=False)


def test_every_run_records_threads_device_and_versions():
    result = runs.run(SHORT.with_train(epochs=1), progress=False)
    assert result.machine["torch_threads"] == torch.get_num_threads()
    assert result.machine["device"] == "cpu"
    assert {"python", "torch", "numpy", "timm"} <= set(result.versions)
    metadata = ckpt.load_metadata(result.model_stem)
    assert metadata["machine"] == result.machine and metadata["versions"] == result.versions
    assert json.loads((result.path / "result.json").read_text())["machine"]["torch_threads"] >= 1
