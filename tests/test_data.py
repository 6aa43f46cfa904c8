"""Data layer: names and metadata from medmnist.INFO, files (download, MD5, corruption), batches,
stratified subsets, and tensor augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medmnist import INFO

from medsoup.core import augment
from medsoup.core import data as md
from tests.conftest import real_file, tiny, write_npz

OFFICIAL = ("breastmnist", "pneumoniamnist", "retinamnist")


# ---------------------------------------------------------------- names and metadata

def test_datasets_are_every_2d_medmnist_flag():
    assert set(md.DATASETS) == {flag for flag in INFO if not flag.endswith("3d")}
    assert len(md.DATASETS) == 12


def test_task_kinds():
    assert md.task_of("chestmnist") == "multi-label"
    assert md.task_of("retinamnist") == "ordinal"
    assert md.task_of("breastmnist") == "binary"
    assert md.task_of("pathmnist") == "multi-class"
    assert {md.task_of(name) for name in md.DATASETS} == {"multi-class", "binary", "multi-label", "ordinal"}


def test_unknown_dataset_names_it_and_lists_valid():
    with pytest.raises(ValueError, match="'cifar10'") as error:
        md.check_dataset("cifar10")
    assert all(name in str(error.value) for name in md.DATASETS)


def test_unknown_size_names_it_and_lists_valid():
    with pytest.raises(ValueError, match="32") as error:
        md.check_dataset("pathmnist", 32)
    assert "(28, 64, 128, 224)" in str(error.value)


@pytest.mark.parametrize("size", md.SIZES)
def test_file_names_urls_md5s_from_info(size):
    for name in md.DATASETS:
        suffix = "" if size == 28 else f"_{size}"
        assert md.file_name(name, size) == f"{name}{suffix}.npz"
        assert md.official_md5(name, size) == INFO[name][f"MD5{suffix}"]
        assert md.official_url(name, size) == INFO[name][f"url{suffix}"]
        assert md.file_name(name, size) in md.official_url(name, size)


def test_data_root_parameter_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSOUP_DATA", str(tmp_path / "env"))
    assert md.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert md.data_root() == tmp_path / "env"
    monkeypatch.delenv("MEDSOUP_DATA")
    assert md.data_root() == md.DEFAULT_ROOT and md.DEFAULT_ROOT.name == "data"


@pytest.mark.parametrize("name", md.DATASETS)
@pytest.mark.parametrize("size", md.SIZES)
def test_synthetic_arrays_have_official_layout(name, size):
    info = INFO[name]
    data = tiny(name, size, n=3)
    for split in md.SPLITS:
        images, labels = data.splits[split].images, data.splits[split].labels
        assert images.dtype == torch.uint8
        assert images.shape == (3, info["n_channels"], size, size)
        assert labels.shape == (3, len(info["label"]) if data.task == "multi-label" else 1)
    assert data.label_names == tuple(info["label"][str(i)] for i in range(len(info["label"])))
    assert data.num_classes == len(info["label"])
    assert data.in_chans == info["n_channels"]


def test_synthetic_arrays_default_to_official_split_sizes():
    arrays = md.synthetic_arrays("breastmnist")
    assert {s: len(arrays[f"{s}_images"]) for s in md.SPLITS} == INFO["breastmnist"]["n_samples"]


# ---------------------------------------------------------------- official files (offline copies)

@pytest.mark.parametrize("name", OFFICIAL)
def test_official_files_load_with_info_metadata(name):
    if real_file(name) is None:
        pytest.skip(f"{name}.npz not in {md.data_root()}")
    data = md.load_dataset(name)
    info = INFO[name]
    assert {s: len(data.splits[s]) for s in md.SPLITS} == info["n_samples"]
    assert data.splits["train"].images.dtype == torch.uint8
    assert data.splits["train"].images.shape[1:] == (1 if info["n_channels"] == 1 else 3, 28, 28)
    assert data.label_names == tuple(info["label"][str(i)] for i in range(len(info["label"])))
    assert data.task == md.task_of(name)


def test_train_subset_is_stratified_and_leaves_val_test_whole(breast):
    subset = md.load_dataset("breastmnist", train_subset=100, subset_seed=3)
    assert len(subset.splits["train"]) == 100
    assert len(subset.splits["val"]) == len(breast.splits["val"])
    full = breast.splits["train"].labels[:, 0].float().mean()
    part = subset.splits["train"].labels[:, 0].float().mean()
    assert abs(float(full - part)) < 0.02
    again = md.load_dataset("breastmnist", train_subset=100, subset_seed=3)
    assert torch.equal(again.splits["train"].images, subset.splits["train"].images)


def test_stratified_indices():
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5).reshape(-1, 1)
    index = md.stratified_indices(labels, 20, seed=0)
    assert torch.equal(index, torch.sort(index).values) and len(set(index.tolist())) == len(index)
    counts = torch.bincount(labels[index, 0], minlength=3).tolist()
    assert counts == [16, 3, 1]
    assert torch.equal(index, md.stratified_indices(labels, 20, seed=0))
    assert not torch.equal(index, md.stratified_indices(labels, 20, seed=1))
    assert torch.equal(md.stratified_indices(labels, 500, seed=0), torch.arange(100))


@pytest.mark.parametrize("counts,n,expected", [
    ((50, 30, 20), 17, [9, 5, 3]),  # shares 8.5, 5.1, 3.4: rounding gave 16
    ((60, 10, 5, 3, 1, 1, 1), 10, [4, 1, 1, 1, 1, 1, 1]),  # five shares below one: raising them gave 13
    ((80, 15, 5), 20, [16, 3, 1]),  # exact shares
    ((5, 3, 1, 1), 3, [2, 1, 0, 0]),  # fewer samples than classes: the largest shares
    ((1, 1, 1, 1, 96), 5, [1, 1, 1, 1, 1]),  # every class present, the largest gives way
    ((2, 2, 2), 5, [2, 2, 1]),  # a tie goes to the class listed first
])
def test_class_quotas_are_largest_remainder_and_sum_to_n(counts, n, expected):
    assert md.class_quotas(list(counts), n) == expected


@pytest.mark.parametrize("counts", [(50, 30, 20), (60, 10, 5, 3, 1, 1, 1), (1, 1, 1, 1, 96), (7, 400, 93, 12),
                                    (33, 33, 34), (3, 97)])
def test_class_quotas_are_exact_and_stratified_for_every_size(counts):
    total = sum(counts)
    for n in range(1, total + 1):
        quotas = md.class_quotas(list(counts), n)
        assert sum(quotas) == n and all(0 <= q <= c for q, c in zip(quotas, counts))
        if n >= len(counts):
            assert min(quotas) >= 1
        if all(c * n >= total for c in counts):  # no share below one: within one of every share
            assert all(abs(q - c * n / total) < 1 for q, c in zip(quotas, counts))
    with pytest.raises(ValueError, match="cannot take 0 of 100 samples"):
        md.class_quotas([50, 50], 0)


@pytest.mark.parametrize("name", ["breastmnist", "retinamnist", "chestmnist", "dermamnist"])
def test_stratified_indices_return_the_size_asked_for(name):
    """Binary, ordinal, multi-label (stratified by its first label) and multi-class label mixes."""
    labels = torch.from_numpy(md.synthetic_arrays(name, n_per_split=300, seed=1)["train_labels"].astype(np.int64))
    labels = labels.reshape(len(labels), -1)
    if name == "dermamnist":  # skewed like the real one: most images in one class, some classes rare
        labels = torch.cat([torch.full((250, 1), 5), torch.arange(7).repeat(8)[:50, None]])
    keys = labels[:, 0]
    for n in (1, 7, 10, 17, 64, 128, 299):
        index = md.stratified_indices(labels, n, seed=0)
        assert len(index) == n and len(set(index.tolist())) == n and torch.equal(index, torch.sort(index).values)
        counts = torch.bincount(keys)
        taken = torch.bincount(keys[index], minlength=len(counts))
        assert taken[counts > 0].tolist() == md.class_quotas(counts[counts > 0].tolist(), n)
        assert torch.equal(index, md.stratified_indices(labels, n, seed=0))
    assert not torch.equal(md.stratified_indices(labels, 100, seed=0), md.stratified_indices(labels, 100, seed=1))


# ---------------------------------------------------------------- download, MD5 and corruption

def _serve(monkeypatch, arrays_for, md5s):
    """Simulate medmnist's downloader serving synthetic files; official MD5s patched to theirs."""
    def download(name, size, folder):
        write_npz(folder / md.file_name(name, size), arrays_for(name, size))

    monkeypatch.setattr(md, "_download_with_medmnist", download)
    monkeypatch.setattr(md, "official_md5", lambda name, size=28: md5s[(name, size)])


@pytest.mark.parametrize("name,size", [("dermamnist", 28), ("chestmnist", 64), ("octmnist", 128),
                                       ("bloodmnist", 224)])
def test_missing_file_is_downloaded_and_md5_checked(monkeypatch, tmp_path, name, size):
    arrays = md.synthetic_arrays(name, size, n_per_split=4)
    reference = write_npz(tmp_path / "reference" / md.file_name(name, size), arrays)
    _serve(monkeypatch, lambda n, s: arrays, {(name, size): md.md5_of(reference)})
    root = tmp_path / "data"
    data = md.load_dataset(name, size, root=root)
    assert (root / md.file_name(name, size)).read_bytes() == reference.read_bytes()
    assert [p.name for p in root.iterdir()] == [md.file_name(name, size)]  # no staging left behind
    assert torch.equal(data.splits["val"].labels, torch.from_numpy(arrays["val_labels"].astype(np.int64)).reshape(4, -1))
    assert data.splits["train"].images.shape == (4, INFO[name]["n_channels"], size, size)


def test_data_folder_comes_from_env(monkeypatch, tmp_path):
    arrays = md.synthetic_arrays("pathmnist", 28, n_per_split=2)
    reference = write_npz(tmp_path / "reference.npz", arrays)
    _serve(monkeypatch, lambda n, s: arrays, {("pathmnist", 28): md.md5_of(reference)})
    monkeypatch.setenv("MEDSOUP_DATA", str(tmp_path / "envdata"))
    md.load_dataset("pathmnist")
    assert (tmp_path / "envdata" / "pathmnist.npz").exists()


def test_offline_error_is_one_line_naming_file_url_folder_and_env_and_creates_nothing(monkeypatch, tmp_path):
    def fail(name, size, folder):  # as medmnist fails offline: its many lines around the network error
        try:
            raise OSError("[Errno -2] Name or service not known")
        except OSError:
            raise RuntimeError("\n    Automatic download failed! Please download ...\n    1. [Optional] ...\n")

    monkeypatch.setattr(md, "_download_with_medmnist", fail)
    root = tmp_path / "mistyped" / "data"
    with pytest.raises(md.DatasetError) as error:
        md.load_dataset("dermamnist", 64, root=root)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"dermamnist_64.npz is not in the data folder {root.resolve()} "
                                                       "(the folder does not exist; download failed: OSError: "
                                                       "[Errno -2] Name or service not known)")
    assert md.official_url("dermamnist", 64) in message and "$MEDSOUP_DATA" in message
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its parent was left behind
    (tmp_path / "data").mkdir()
    with pytest.raises(md.DatasetError, match=r"is not in the data folder \S+ \(download failed: OSError"):
        md.load_dataset("dermamnist", 64, root=tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []  # an existing folder stays, empty


def test_download_false_names_the_missing_file(tmp_path):
    with pytest.raises(md.DatasetError, match="tissuemnist.npz"):
        md.load_dataset("tissuemnist", root=tmp_path, download=False)


def test_downloaded_file_with_wrong_md5_is_not_kept(monkeypatch, tmp_path):
    arrays = md.synthetic_arrays("organamnist", 28, n_per_split=2)
    _serve(monkeypatch, lambda n, s: arrays, {("organamnist", 28): "0" * 32})
    root = tmp_path / "data"
    with pytest.raises(md.DatasetError, match="expected the official 0000"):
        md.load_dataset("organamnist", root=root)
    assert not root.exists()


def test_existing_file_with_wrong_md5_is_refused_and_unchanged(tmp_path):
    path = write_npz(tmp_path / "breastmnist.npz", md.synthetic_arrays("breastmnist", n_per_split=2))
    before = path.read_bytes()
    with pytest.raises(md.DatasetError, match=md.official_md5("breastmnist")):
        md.load_dataset("breastmnist", root=tmp_path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip@200", "flip@1000", "flip@middle"])
def test_corrupted_npz_gives_clear_error_and_is_not_overwritten(monkeypatch, tmp_path, damage):
    path = write_npz(tmp_path / "retinamnist.npz", md.synthetic_arrays("retinamnist", n_per_split=50))
    raw = bytearray(path.read_bytes())
    if damage.startswith("flip"):  # flipped bits inside compressed data: CRC or zlib errors
        position = len(raw) // 2 if damage == "flip@middle" else int(damage[5:])
        raw[position] ^= 0xFF
        raw[position + 1] ^= 0x55
    path.write_bytes(bytes(raw[: len(raw) // 2]) if damage == "truncate" else
                     b"\x00not a zip" * 100 if damage == "garbage" else bytes(raw))
    before = path.read_bytes()
    # The MD5 matches (as for a file corrupted before its MD5 was recorded): the reader must still refuse it.
    monkeypatch.setattr(md, "official_md5", lambda name, size=28: md.md5_of(path))
    monkeypatch.setattr(md, "_download_with_medmnist", lambda *a: pytest.fail("must not download"))
    with pytest.raises(md.DatasetError, match="not a readable MedMNIST .npz"):
        md.load_dataset("retinamnist", root=tmp_path)
    assert path.read_bytes() == before


def test_npz_with_wrong_shapes_is_refused(monkeypatch, tmp_path):
    arrays = md.synthetic_arrays("pneumoniamnist", 64, n_per_split=2)  # 64 px arrays under the 28 px name
    path = write_npz(tmp_path / "pneumoniamnist.npz", arrays)
    monkeypatch.setattr(md, "official_md5", lambda name, size=28: md.md5_of(path))
    with pytest.raises(md.DatasetError, match=r"expected \(N, 28, 28\) uint8"):
        md.load_dataset("pneumoniamnist", root=tmp_path)


def test_npz_missing_an_array_is_refused(monkeypatch, tmp_path):
    arrays = md.synthetic_arrays("breastmnist", n_per_split=2)
    del arrays["test_labels"]
    path = write_npz(tmp_path / "breastmnist.npz", arrays)
    monkeypatch.setattr(md, "official_md5", lambda name, size=28: md.md5_of(path))
    with pytest.raises(md.DatasetError, match="test_labels"):
        md.load_dataset("breastmnist", root=tmp_path)


# ---------------------------------------------------------------- batches

def test_batches_shapes_range_and_targets():
    data = tiny("breastmnist", n=10)
    batches = list(data.batches("val", 4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    images, targets = batches[0]
    assert images.dtype == torch.float32 and images.shape == (4, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    expected = data.splits["val"].images[:4].float() / 127.5 - 1
    assert torch.allclose(images, expected)
    assert targets.dtype == torch.long and targets.shape == (4,)
    assert [len(x) for x, _ in data.batches("val", 4, drop_last=True)] == [4, 4]


def test_grayscale_becomes_three_channels():
    data = tiny("pneumoniamnist", n=4)
    images, _ = next(data.batches("train", 4, in_chans=3))
    assert images.shape == (4, 3, 28, 28)
    assert torch.equal(images[:, 0], images[:, 2])
    with pytest.raises(ValueError, match="3-channel"):
        next(tiny("dermamnist", n=2).batches("train", 2, in_chans=1))


def test_multilabel_targets_are_float_matrices():
    data = tiny("chestmnist", n=6)
    _, targets = next(data.batches("train", 6))
    assert targets.dtype == torch.float32 and targets.shape == (6, 14)


def test_shuffled_augmented_batches_are_reproducible_with_a_seeded_generator():
    data = tiny("dermamnist", n=20)

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return [b for b in data.batches("train", 8, shuffle=True, augment="heavy", generator=g)]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    seen = torch.cat([t for _, t in first])
    assert sorted(seen.tolist()) == sorted(data.targets(data.splits["train"].labels).tolist())


# ---------------------------------------------------------------- augmentation

@pytest.mark.parametrize("level", augment.AUGMENT_LEVELS)
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 64, 64)])
def test_augmentation_keeps_shape_range_and_is_seeded(level, shape):
    x = torch.rand(shape) * 2 - 1
    out = augment.augment_batch(x, level, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, augment.augment_batch(x, level, torch.Generator().manual_seed(0)))
    if level == "none":
        assert torch.equal(out, x)
    else:
        assert not torch.equal(out, x)


def test_unknown_augmentation_level():
    with pytest.raises(ValueError, match="'extreme'.*heavy"):
        augment.augment_batch(torch.zeros(1, 1, 8, 8), "extreme")


def test_flip_is_a_mirror_or_identity_per_image():
    x = torch.randn(16, 2, 6, 6)
    out = augment.random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_translate_is_a_shifted_crop_of_the_reflect_padded_image():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    out = augment.random_translate(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        windows = [(r, c) for r in range(5) for c in range(5)
                   if torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8])]
        assert windows, f"image {i} is not a crop of the padded image"
    assert torch.equal(augment.random_translate(x, 0), x)


def test_erase_zeroes_one_box():
    x = torch.ones(4, 1, 10, 10)
    out = augment.random_erase(x, 0.4, torch.Generator().manual_seed(0))
    for image in out[:, 0]:
        rows, cols = torch.nonzero(image == 0, as_tuple=True)
        assert len(rows) > 0
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert rows.max() - rows.min() + 1 <= 5


def test_normalise_matches_medmnist_transform():
    images = torch.tensor([0, 127, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    expected = (torch.tensor([0, 127, 255]) / 255.0 - 0.5) / 0.5
    assert torch.allclose(augment.normalise(images).flatten(), expected, atol=1e-6)


# ---------------------------------------------------------------- resize on load (file_size)

def test_file_size_reads_that_file_and_batches_come_at_size(monkeypatch, tmp_path):
    arrays = md.synthetic_arrays("pneumoniamnist", 28, n_per_split=6)
    reference = write_npz(tmp_path / "reference.npz", arrays)
    _serve(monkeypatch, lambda n, s: arrays, {("pneumoniamnist", 28): md.md5_of(reference)})
    data = md.load_dataset("pneumoniamnist", 224, root=tmp_path / "data", file_size=28)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["pneumoniamnist.npz"]  # no 224 px file asked for
    assert data.size == 224 and data.splits["train"].images.shape[-1] == 28  # stored small on the device
    images, _ = next(data.batches("val", 4, in_chans=3))
    assert images.shape == (4, 3, 224, 224)
    small, _ = next(md.load_dataset("pneumoniamnist", 28, root=tmp_path / "data").batches("val", 4, in_chans=3))
    # bilinear upsampling keeps each image's mean intensity (to within interpolation at the border)
    assert torch.allclose(images.mean(dim=(2, 3)), small.mean(dim=(2, 3)), atol=0.02)


def test_resize_is_identity_at_the_same_size_and_antialiased_when_shrinking():
    x = torch.rand(2, 1, 28, 28)
    assert md.resize(x, 28) is x
    stripes = torch.zeros(1, 1, 64, 64)
    stripes[..., ::2] = 1.0  # a 2-pixel period: aliasing would keep it, an antialiased shrink averages it
    assert torch.allclose(md.resize(stripes, 28), torch.full((1, 1, 28, 28), 0.5), atol=0.1)


def test_run_config_checks_file_size():
    from medsoup.runs.store import RunConfig

    with pytest.raises(ValueError, match="unknown image size 100"):
        RunConfig(dataset="breastmnist", size=224, file_size=100)
