"""``python -m medsoup.runs``: list, show, diff and rm on a tiny store of real runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from medsoup.core import data as md
from medsoup.runs import cli
from medsoup.runs import store as runs
from tests.conftest import ROOT, TINY_TRAIN, StopAfter, real_file, write_npz

FINISHED = runs.RunConfig(dataset="breastmnist", model="smallcnn", in_chans=1, train_subset=32,
                          train=TINY_TRAIN.replace(epochs=1))
STOPPED = FINISHED.with_train(epochs=3, seed=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run and one stopped after its first epoch, trained once for the module on
    BreastMNIST, or a synthetic stand-in where the official file is absent."""
    cache = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        if real_file("breastmnist") is None:
            path = write_npz(tmp_path_factory.mktemp("data") / "breastmnist.npz",
                             md.synthetic_arrays("breastmnist", n_per_split=40))
            patch.setenv("MEDSOUP_DATA", str(path.parent))
            patch.setattr(md, "official_md5", lambda name, size=28: md.md5_of(path))
        runs.run(FINISHED, cache, progress=False)
        patch.setattr(runs, "make_callbacks", lambda config: [StopAfter(2)])
        with pytest.raises(KeyboardInterrupt):
            runs.run(STOPPED, cache, progress=False)
    return cache


@pytest.fixture
def store(trained, run_cache):
    """A copy of ``trained`` and a run being trained (its lock held), in this test's cache."""
    shutil.copytree(trained, run_cache)
    busy = run_cache / "0123456789abcdef"
    busy.mkdir()
    (busy / "config.json").write_text(json.dumps(FINISHED.with_train(seed=2).to_dict(), default=str))
    lock = runs.run_lock(busy)
    with lock:
        yield run_cache


def keys():
    return runs.run_key(FINISHED), runs.run_key(STOPPED), "0123456789abcdef"


def test_list_shows_every_run_with_its_state_metrics_and_size(store, capsys):
    assert cli.main(["list"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["key", "dataset", "model", "method", "seed", "state", "metric", "val", "test",
                              "wall_s", "size"]
    rows = {line.split()[0]: line.split() for line in lines}
    finished, stopped, busy = keys()
    result = runs.RunResult.load(store / finished)
    assert rows[finished][1:6] == ["breastmnist", "smallcnn", "plain", "0", "finished"]
    assert rows[finished][7:9] == [f"{result.val['auc']:.4f}", f"{result.test['auc']:.4f}"]
    assert rows[stopped][5:7] == ["resumable", "1/3"] and rows[stopped][8:10] == ["-", "-"]
    assert rows[busy][5] == "running"
    assert cli.main(["list", "train.seed=1"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [stopped]


def test_list_of_an_empty_store_or_filter_is_the_header_alone(store, tmp_path, capsys):
    columns = ["key", "dataset", "model", "method", "seed", "state", "metric", "val", "test", "wall_s", "size"]
    assert cli.main(["--cache", str(tmp_path / "empty"), "list"]) == 0
    assert capsys.readouterr().out.split() == columns
    assert cli.main(["list", "dataset=retinamnist"]) == 0
    assert capsys.readouterr().out.split() == columns


def test_show_prints_config_history_and_trainings(store, capsys):
    finished = keys()[0]
    assert cli.main(["show", finished[:6]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {finished} (finished)") and '"epoch": 1' in out and '"resumed": false' in out


def test_diff_names_the_fields_that_differ(store, capsys):
    finished, stopped, _ = keys()
    assert cli.main(["diff", finished, stopped]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [["train.epochs", "1", "3"], ["train.seed", "0", "1"]]


def test_rm_lists_asks_and_skips_running_runs(store, capsys):
    finished, stopped, busy = keys()
    assert cli.remove(store, [], ["dataset=breastmnist"], yes=False, answer=lambda prompt: "n").endswith("nothing removed")
    assert all((store / key).exists() for key in keys())
    message = cli.remove(store, [], ["dataset=breastmnist"], yes=False, answer=lambda prompt: "y")
    assert message == f"skipping running runs: {busy}\nremoved 2 runs"
    listed = capsys.readouterr().out
    assert finished in listed and stopped in listed and busy not in listed
    assert [p.name for p in store.iterdir()] == [busy]


def test_rm_without_a_terminal_or_yes_refuses_with_a_message(store):
    command = [sys.executable, "-m", "medsoup.runs", "--cache", str(store), "rm", "state=finished"]
    for stdin in (subprocess.DEVNULL, None):  # a pipe at its end, or stdin closed altogether
        done = subprocess.run(command if stdin is not None else ["bash", "-c", '"$@" <&-', "rm", *command],
                              cwd=ROOT, stdin=stdin, capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip() == "error: refusing to delete 1 runs without --yes when stdin is not a terminal"
        assert (store / keys()[0]).exists()

    def end_of_input(prompt):
        raise EOFError

    assert cli.remove(store, [], ["state=finished"], yes=False, answer=end_of_input) == "nothing removed"


def test_bad_input_is_named(store, capsys):
    assert cli.main(["show", "ffff"]) == 2 and "no runs in" in capsys.readouterr().err
    assert cli.main(["list", "datset=x"]) == 2 and "unknown filter field 'datset'" in capsys.readouterr().err
    assert cli.main(["rm", "--yes", "state=finished"]) == 0 and not (store / keys()[0]).exists()


def test_module_runs_from_the_command_line(store):
    done = subprocess.run([sys.executable, "-m", "medsoup.runs", "--cache", str(store), "list", "state=finished"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[1].split()[0] == keys()[0]


def test_the_command_line_starts_without_torch(store):
    code = ("import sys; from medsoup.runs import cli; "
            f"cli.main(['--cache', {str(store)!r}, 'list']); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)


def test_diff_shows_an_init_on_one_side_as_one_row(tmp_path):
    for name, config in (("a", FINISHED), ("b", FINISHED.replace(init=STOPPED))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config.to_dict(), default=str))
    assert [line.split() for line in cli.diff(tmp_path / "a", tmp_path / "b").splitlines()[1:]] == [
        ["init", "None", "(config)"]]
