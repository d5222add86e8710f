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
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the checkout
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
    with pytest.raises(ValueError, match="known: cifar10, mnist .*cifar100, svhn; or imagefolder:PATH, tensors:FILE"):
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


# --------------------------------------------------------------------------- CIFAR-100


def write_cifar100_split(root: Path, name: str, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             "fine_labels": rng.integers(0, 100, size=n).tolist(), "coarse_labels": [0] * n}
    (root / "cifar-100-python").mkdir(parents=True, exist_ok=True)
    with open(root / "cifar-100-python" / name, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


def test_load_cifar100_reads_fine_labels_and_rgb_planes(tmp_path):
    batch = write_cifar100_split(tmp_path, "test", n=7)
    write_cifar100_split(tmp_path, "train", n=5, seed=1)
    x, y = load_dataset("cifar100", root=tmp_path)
    assert x.shape == (7, 3, 32, 32) and y.tolist() == batch["fine_labels"]
    assert x[3, 1, 0, 0] == batch["data"][3, 1024] / 255
    assert len(load_dataset("CIFAR-100", root=tmp_path, train=True)[0]) == 5


def test_cifar100_missing_and_bad_labels_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*'test'.*torchvision.*NRPM_DATA"):
        load_dataset("cifar100", root=tmp_path)
    batch = write_cifar100_split(tmp_path, "test", n=3)
    batch["fine_labels"][0] = 100
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump(batch, f)
    data.clear_cache()
    with pytest.raises(ValueError, match="labels span .*expected 0..99"):
        load_dataset("cifar100", root=tmp_path)


def test_cifar100_and_svhn_cannot_be_downloaded(tmp_path):
    for name, title in (("cifar100", "CIFAR-100"), ("svhn", "SVHN")):
        with pytest.raises(ValueError, match=f"nrpm cannot download {title}"):
            load_dataset(name, root=tmp_path, download=True)


# --------------------------------------------------------------------------- SVHN


def test_load_svhn_maps_label_10_to_0_and_transposes(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)  # (H, W, C, N) as SVHN stores them
    sio.savemat(tmp_path / "test_32x32.mat", {"X": images, "y": np.array([[10], [1], [9], [10], [3]])})
    x, y = load_dataset("svhn", root=tmp_path)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 1, 9, 0, 3]
    assert x[2, 1, 4, 7] == images[4, 7, 1, 2] / 255  # row 4, column 7, green, of image 2


def test_svhn_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="test_32x32.mat"):
        load_dataset("svhn", root=tmp_path)
    sio = pytest.importorskip("scipy.io")
    sio.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(ValueError, match="3 labels in y for 2 images"):
        load_dataset("svhn", root=tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    data.clear_cache()
    with pytest.raises(ValueError, match="not a readable SVHN .mat file"):
        load_dataset("svhn", root=tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)  # as if scipy were not installed
    data.clear_cache()
    with pytest.raises(data.MissingDependency, match="pip install scipy"):
        load_dataset("svhn", root=tmp_path)


# --------------------------------------------------------------------------- tensors:FILE


def test_tensor_files_float_nchw_and_uint8_nhwc_read_the_same(tmp_path):
    pixels = torch.randint(0, 256, (6, 2, 3, 3), dtype=torch.uint8)  # N, H, W, C
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.save({"x": pixels.permute(0, 3, 1, 2).float() / 255, "y": labels}, tmp_path / "a.pt")
    np.savez(tmp_path / "b.npz", x=pixels.numpy(), y=labels.numpy())
    a, b = data.load_tensor_file(tmp_path / "a.pt"), data.load_tensor_file(tmp_path / "b.npz")
    assert torch.equal(a.x, b.x) and a.x.shape == (6, 3, 2, 3) and torch.equal(a.y, b.y)
    assert a.layout == "float NCHW" and "uint8 NHWC" in b.detected and "6 samples 3x2x3" in b.detected


def test_tensor_file_splits_take_the_first_and_last_n(tmp_path):
    torch.save({"x": torch.rand(10, 1, 2, 2), "y": torch.arange(10)}, tmp_path / "s.pt")
    test = data.load_samples(f"tensors:{tmp_path / 's.pt'}", "test", 3)
    val = data.load_samples(f"tensors:{tmp_path / 's.pt'}", "val", 3)
    assert test.y.tolist() == [0, 1, 2] and val.y.tolist() == [7, 8, 9]
    assert "the last 3 samples of the file" in val.info["detected"] and val.info["kind"] == "tensors"
    with pytest.raises(ValueError, match="--n-samples 11 exceeds the 10 samples"):
        data.load_samples(f"tensors:{tmp_path / 's.pt'}", "test", 11)


@pytest.mark.parametrize("x,y,fragment", [
    (torch.linspace(0, 2, 16).view(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), "spans 0..2, expected [0, 1]"),
    (torch.rand(4, 2, 2), torch.zeros(4, dtype=torch.long), "3 dims"),
    (torch.rand(4, 1, 2, 2), torch.zeros(5, dtype=torch.long), "5 labels for 4 images"),
    (torch.rand(4, 1, 2, 2), torch.zeros(4), "expected integer class indices"),
    (torch.rand(4, 1, 2, 2), torch.zeros(4, 3, dtype=torch.long), "not one-hot"),
    (torch.rand(4, 1, 2, 2), -torch.ones(4, dtype=torch.long), "expected indices >= 0"),
    (torch.rand(4, 5, 5, 3), torch.zeros(4, dtype=torch.long), "looks channels-last"),
    (torch.zeros(4, 3, 5, 5, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), "x.permute(0, 2, 3, 1)"),
    (torch.zeros(4, 1, 2, 2, dtype=torch.int32), torch.zeros(4, dtype=torch.long), "x is torch.int32"),
    (torch.full((4, 1, 2, 2), float("nan")), torch.zeros(4, dtype=torch.long), "NaN"),
])
def test_malformed_tensor_files_are_refused_with_what_was_expected(x, y, fragment, tmp_path):
    torch.save({"x": x, "y": y}, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        data.load_tensor_file(tmp_path / "bad.pt")
    assert fragment in str(err.value) and str(tmp_path / "bad.pt") in str(err.value)


def test_unreadable_tensor_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tensors file not found"):
        data.load_tensor_file(tmp_path / "none.pt")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unknown suffix '.csv'"):
        data.load_tensor_file(tmp_path / "x.csv")
    (tmp_path / "g.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not readable by torch.load"):
        data.load_tensor_file(tmp_path / "g.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"expected a dict with 'x' \(images\) and 'y'"):
        data.load_tensor_file(tmp_path / "list.pt")
    np.savez(tmp_path / "k.npz", images=np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(ValueError, match=r"holds arrays \['images'\]"):
        data.load_tensor_file(tmp_path / "k.npz")
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load_tensor_file(tmp_path / "t.npz")


# --------------------------------------------------------------------------- imagefolder:PATH


def write_png(path: Path, pixels: np.ndarray) -> None:
    image_module = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    image_module.fromarray(pixels).save(path)


def solid(value: int, size=(3, 3)) -> np.ndarray:
    return np.full((*size, 3), value, dtype=np.uint8)


def test_imagefolder_classes_sorted_and_interleaved(tmp_path):
    for name, value in (("cat", 10), ("ant", 20)):
        for i in range(3):
            write_png(tmp_path / name / f"{i}.png", solid(value + i))
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    samples = data.load_samples(f"imagefolder:{tmp_path}", "test", 4, image_size=3)
    assert samples.y.tolist() == [0, 1, 0, 1]  # ant (0), cat (1), ant, cat: every class among the first N
    assert (samples.x[:, 0, 0, 0] * 255).round().tolist() == [20, 10, 21, 11]
    assert "2 classes (ant, cat), 6 images; the first 4" in samples.info["detected"]
    val = data.load_samples(f"imagefolder:{tmp_path}", "val", 2, image_size=3)
    assert (val.x[:, 0, 0, 0] * 255).round().tolist() == [22, 12] and "same folder" in val.info["detected"]


def test_imagefolder_resizes_the_shorter_side_then_centre_crops(tmp_path):
    pixels = np.zeros((2, 6, 3), dtype=np.uint8)  # 2 high, 6 wide
    pixels[:, :, 0] = np.arange(6) * 40  # red grows left to right
    write_png(tmp_path / "only" / "a.png", pixels)
    x = data.load_samples(f"imagefolder:{tmp_path}", "test", 1, image_size=2).x
    # height 2 stays, width 6 stays: the centre crop keeps columns 2 and 3
    assert x.shape == (1, 3, 2, 2) and (x[0, 0, 0] * 255).round().tolist() == [80, 120]
    gray = data.load_samples(f"imagefolder:{tmp_path}", "test", 1, image_size=4, channels=1).x
    assert gray.shape == (1, 1, 4, 4)  # resized: shorter side 2 -> 4, longer 6 -> 12, centre 4x4


def test_imagefolder_split_folders(tmp_path):
    for split, value in (("train", 50), ("val", 60)):
        for cls in ("a", "b"):
            write_png(tmp_path / split / cls / "0.png", solid(value))
    test = data.load_samples(f"imagefolder:{tmp_path}", "test", 2, image_size=3)  # no test/: val/ is the test set
    assert (test.x[:, 0, 0, 0] * 255).round().tolist() == [60, 60] and str(tmp_path / "val") in test.info["detected"]
    val = data.load_samples(f"imagefolder:{tmp_path}", "val", 1, image_size=3)
    assert (val.x[0, 0, 0, 0] * 255).round() == 50 and val.y.tolist() == [1]
    write_png(tmp_path / "train" / "c" / "0.png", solid(1))
    with pytest.raises(ValueError, match="class folders of .* differ"):
        data.load_samples(f"imagefolder:{tmp_path}", "test", 1, image_size=3)


def test_imagefolder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        data.load_samples(f"imagefolder:{tmp_path / 'none'}", "test", 1)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no test/ or val/"):
        data.load_samples(f"imagefolder:{tmp_path}", "test", 1)
    with pytest.raises(ValueError, match=f"class folder {tmp_path / 'train' / 'a'} holds no images"):
        data.load_samples(f"imagefolder:{tmp_path}", "val", 1)
    write_png(tmp_path / "train" / "a" / "ok.png", solid(0))
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png is not readable"):
        data.load_samples(f"imagefolder:{tmp_path}", "val", 2)
    with pytest.raises(ValueError, match="--n-samples 3 exceeds the 2 images"):
        data.load_samples(f"imagefolder:{tmp_path}", "val", 3)


def test_data_specs_are_parsed_or_refused():
    assert data.parse_data_spec("CIFAR-10").dataset == "cifar10"
    assert data.parse_data_spec("tensors:C:/x.pt").value == "C:/x.pt"
    with pytest.raises(ValueError, match="tensors: needs a path"):
        data.parse_data_spec("tensors:")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*imagefolder:PATH"):
        data.parse_data_spec("imagenet")
