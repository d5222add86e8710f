"""Data readers (on files written here), helpers, augmentation, and the staged real data."""

import gzip
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from nrpm import data
from nrpm.data import (
    batches,
    load_cifar10,
    load_dataset,
    load_mnist,
    random_crop_flip,
    resolve_data_root,
    subset,
)

# --------------------------------------------------------------------------- file writers


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = idx_bytes(array, magic)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist_test_split(root: Path, n: int = 10000, compress_images: bool = False):
    """A full-size (10000) MNIST test split of random pixels; returns (images, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", images, 2051, compress=compress_images)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels, 2049, compress=True)
    return images, labels


def write_cifar_batch(path: Path, n: int = 10000, seed: int = 0, bytes_keys: bool = False):
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": "testing batch 1 of 1",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "labels": rng.integers(0, 10, size=n).tolist(),
        "filenames": [f"{i}.png" for i in range(n)],
    }
    stored = {k.encode(): v for k, v in batch.items()} if bytes_keys else batch
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(stored, f, protocol=2)
    return batch


# --------------------------------------------------------------------------- root


def test_resolve_data_root_order(monkeypatch, tmp_path):
    # the full order (cache, shared mirror) is tested in test_download.py
    monkeypatch.setenv("NRPM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NRPM_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("NRPM_DATA")
    shared = Path(data.__file__).resolve().parents[2].parent / "shared" / "data"
    expected = shared if (shared / "MNIST").is_dir() else tmp_path / "home" / "data"
    assert resolve_data_root() == expected


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_plain_and_gz(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = write_idx(tmp_path / "imgs", images, 2051, compress=compress)
    np.testing.assert_array_equal(data._read_idx(path, 2051), images)


def test_read_idx_rejects_truncated_payload(tmp_path):
    path = write_idx(tmp_path / "imgs", np.zeros((3, 4, 5)), 2051)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        data._read_idx(path, 2051)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "imgs", np.zeros((30, 28, 28)), 2051, compress=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=str(path.name)):
        data._read_idx(path, 2051)


def test_read_idx_rejects_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(5), 2049)
    with pytest.raises(ValueError, match="magic 2049, expected 2051"):
        data._read_idx(path, 2051)


def test_load_mnist_full_size_split(tmp_path):
    images, labels = write_mnist_test_split(tmp_path)
    x, y = load_mnist(tmp_path, train=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels).long())


def test_load_mnist_returns_copies_that_callers_may_modify(tmp_path):
    write_mnist_test_split(tmp_path, compress_images=True)
    x, y = load_mnist(tmp_path)
    expected_x, expected_y = x.clone(), y.clone()
    x.zero_()
    y.fill_(3)
    x2, y2 = load_mnist(tmp_path)  # served from the cache
    assert torch.equal(x2, expected_x) and torch.equal(y2, expected_y)


def test_load_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path, train=True)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and f"looked in: given {tmp_path}" in message
    assert "train-images-idx3-ubyte[.gz]" in message and "train-labels-idx1-ubyte" in message
    assert "--data-root" in message and "NRPM_DATA" in message


def test_load_mnist_checks_counts(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((100, 28, 28)), 2051)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(100), 2049)
    with pytest.raises(ValueError, match=r"\(10000, 28, 28\)"):
        load_mnist(tmp_path)


def test_load_mnist_rejects_bad_labels(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_test_split(tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10000, 12), 2049)  # plain copy wins
    with pytest.raises(ValueError, match="labels span"):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------- download


def _refuse_network(*args, **kwargs):
    raise AssertionError("network access attempted although the files exist")


def test_download_skipped_when_files_exist(tmp_path, monkeypatch):
    write_mnist_test_split(tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    monkeypatch.setattr(urllib.request, "urlopen", _refuse_network)
    assert len(load_mnist(tmp_path, download=True)[0]) == 10000
    assert len(load_cifar10(tmp_path, download=True)[0]) == 10000


def test_download_failure_is_reported_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path, download=True)
    message = str(err.value)
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz" in message
    assert "no network" in message and "NRPM_DATA" in message and "\n" not in message
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []  # no partial files left


# Downloads from a local HTTP server (files written, hashes, CIFAR archive): test_download.py.


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_read_cifar_batch(tmp_path, bytes_keys):
    batch = write_cifar_batch(tmp_path / "b", n=7, bytes_keys=bytes_keys)
    rows, labels = data._read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(rows, batch["data"])
    assert labels.tolist() == batch["labels"]


def test_read_cifar_batch_truncated(tmp_path):
    write_cifar_batch(tmp_path / "b", n=7)
    (tmp_path / "b").write_bytes((tmp_path / "b").read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        data._read_cifar_batch(tmp_path / "b")


def test_load_cifar10_layout_is_rgb_planes(tmp_path):
    batch = write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    x, y = load_cifar10(tmp_path)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == batch["labels"]
    rows = batch["data"]
    # a row is R plane, G plane, B plane, each row-major 32x32
    assert x[5, 0, 0, 1] == rows[5, 1] / 255
    assert x[5, 1, 0, 0] == rows[5, 1024] / 255
    assert x[5, 2, 31, 31] == rows[5, 3071] / 255
    assert x[5, 0, 1, 0] == rows[5, 32] / 255


def test_load_cifar10_missing_batches_are_named(tmp_path):
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1", n=10)
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path, train=True)
    message = str(err.value)
    assert "data_batch_2" in message and "data_batch_5" in message
    assert "missing data_batch_1" not in message and "--download" in message


def test_load_cifar10_checks_rows_per_batch(tmp_path):
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", n=10)
    with pytest.raises(ValueError, match="10 rows, expected 10000"):
        load_cifar10(tmp_path)


def test_load_dataset_dispatch_and_unknown_name(tmp_path):
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert load_dataset("CIFAR-10", root=tmp_path)[0].shape == (10000, 3, 32, 32)
    with pytest.raises(ValueError, match="known: cifar10, mnist"):
        load_dataset("imagenet", root=tmp_path)


# --------------------------------------------------------------------------- helpers


def test_subset_takes_first_n():
    x, y = torch.arange(10).float(), torch.arange(10)
    xs, ys = subset(x, y, 4)
    assert xs.tolist() == [0, 1, 2, 3] and ys.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot take 11"):
        subset(x, y, 11)


def test_batches_cover_everything_and_shuffle_deterministically():
    x, y = torch.arange(10).float(), torch.arange(10)
    in_order = list(batches(x, y, 4))
    assert [len(b) for b, _ in in_order] == [4, 4, 2]
    assert torch.cat([b for _, b in in_order]).tolist() == list(range(10))
    assert [len(b) for b, _ in batches(x, y, 4, drop_last=True)] == [4, 4]

    def shuffled(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b for _, b in batches(x, y, 3, shuffle=True, generator=gen)])

    assert sorted(shuffled(1).tolist()) == list(range(10))
    assert torch.equal(shuffled(1), shuffled(1))
    assert not torch.equal(shuffled(1), shuffled(2))
    for xb, yb in batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(xb.long(), yb)  # pairs stay together


# --------------------------------------------------------------------------- augmentation


def _candidate_views(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop (and its mirror) of the zero-padded image."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    crops = [
        padded[:, t : t + h, l : l + w]
        for t in range(2 * padding + 1)
        for l in range(2 * padding + 1)
    ]
    return crops + [c.flip(-1) for c in crops]


def test_random_crop_flip_is_a_crop_of_the_padded_image():
    x = torch.rand(16, 3, 8, 8) + 0.1  # strictly positive: padding zeros are recognisable
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    for image, augmented in zip(x, out):
        assert any(torch.equal(augmented, view) for view in _candidate_views(image, 2))


def test_random_crop_flip_varies_per_image_and_flips_some():
    x = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    out = random_crop_flip(x, generator=torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten()[:200].tolist()) for o in out}) > 32
    flipped = sum(
        any(torch.equal(o, v) for v in _candidate_views(x[0], 4)[81:]) for o in out[:16]
    )
    assert 0 < flipped < 16


def test_random_crop_flip_is_deterministic_under_a_generator():
    x = torch.rand(8, 3, 32, 32)
    first = random_crop_flip(x, generator=torch.Generator().manual_seed(7))
    again = random_crop_flip(x, generator=torch.Generator().manual_seed(7))
    other = random_crop_flip(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_random_crop_flip_without_padding_only_flips():
    x = torch.rand(8, 1, 5, 5)
    out = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    for image, augmented in zip(x, out):
        assert torch.equal(augmented, image) or torch.equal(augmented, image.flip(-1))


# --------------------------------------------------------------------------- staged real data


def test_real_mnist_matches_readme(shared_dir):
    x, y = load_mnist(shared_dir / "data", train=False)
    assert x.shape == (10000, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_cifar10_test_split_matches_readme(shared_dir):
    x, y = load_cifar10(shared_dir / "data", train=False)
    assert x.shape == (10000, 3, 32, 32)
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(y).tolist() == [1000] * 10
