"""Download layer and lookup order, against a local HTTP server on 127.0.0.1 (never the network).

Every file served is synthetic and small, built here; its hash is computed here and patched in
place of the published one.
"""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from nrpm import data, fetch, paths
from nrpm.data import download
from nrpm.models import hub
from nrpm.data import load_cifar10, load_mnist, resolve_data_root
from nrpm.models import create_model, load_pretrained, registry, resolve_pretrained_dir

URL_VARS = ("NRPM_MNIST_URL", "NRPM_CIFAR10_URL", "NRPM_PRETRAINED_URL")
REAL_SOURCE_CHECKOUT = paths.source_checkout


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private NRPM_HOME, no location or URL variables, no shared mirror, and no network."""
    monkeypatch.setenv("NRPM_HOME", str(tmp_path / "home"))
    for var in ("NRPM_DATA", "NRPM_PRETRAINED", *URL_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "source_checkout", lambda package_dir=None: None)
    real_urlopen = urllib.request.urlopen

    def local_only(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert url.startswith("http://127.0.0.1:"), f"test tried to reach {url}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    data.clear_cache()
    yield
    data.clear_cache()


class Server:
    """A folder served over HTTP on 127.0.0.1; ``requests`` lists the paths asked for."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep test output clean
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def put(self, name: str, content: bytes) -> str:
        """Serve ``content`` as ``name``; returns its URL."""
        (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(content)
        return self.url + name

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    srv = Server(folder)
    yield srv
    srv.close()


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def idx_gz(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def serve_mnist(server, monkeypatch, n_train=6, n_test=10000):
    """Serve the four MNIST .gz files (tiny train split; full-size but highly compressible test
    split, so load_mnist accepts it) and patch their md5s; returns {file: array}."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 14, 14] = rng.integers(0, 256, n)
        arrays[f"{prefix}-images-idx3-ubyte.gz"] = (images, 2051)
        arrays[f"{prefix}-labels-idx1-ubyte.gz"] = (rng.integers(0, 10, n).astype(np.uint8), 2049)
    for name, (array, magic) in arrays.items():
        content = idx_gz(array, magic)
        server.put(f"mnist/{name}", content)
        monkeypatch.setitem(download.MNIST_MD5, name, md5(content))
    monkeypatch.setenv("NRPM_MNIST_URL", server.url + "mnist")  # no trailing slash on purpose
    return {name: array for name, (array, _) in arrays.items()}


def cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((n, 3072), dtype=np.uint8)
    pixels[:, 0] = rng.integers(0, 256, n)
    batch = {"data": pixels, "labels": rng.integers(0, 10, n).tolist()}
    return pickle.dumps(batch, protocol=2)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def cifar_archive(test_rows=10000) -> bytes:
    members = {f"cifar-10-batches-py/data_batch_{i}": cifar_batch(4, i) for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = cifar_batch(test_rows, 0)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({"label_names": list("abcdefghij")})
    return tar_gz(members)


def serve_cifar(server, monkeypatch, archive: bytes, patch_md5=True):
    server.put("kriz/cifar-10-python.tar.gz", archive)
    if patch_md5:
        monkeypatch.setattr(download, "CIFAR10_MD5", md5(archive))
    monkeypatch.setenv("NRPM_CIFAR10_URL", server.url + "kriz/")


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- fetch


def test_fetch_writes_the_file_after_checking_sha256(server, tmp_path):
    url = server.put("blob.bin", b"x" * 5000)
    dest = fetch.fetch(url, tmp_path / "out" / "blob.bin", sha256=sha256(b"x" * 5000))
    assert dest.read_bytes() == b"x" * 5000
    assert files_under(tmp_path / "out") == ["blob.bin"]  # no .part file left


def test_fetch_bad_hash_fails_and_leaves_no_file(server, tmp_path):
    url = server.put("blob.bin", b"tampered")
    wanted = sha256(b"original")
    with pytest.raises(ValueError) as err:
        fetch.fetch(url, tmp_path / "out" / "blob.bin", sha256=wanted)
    message = str(err.value)
    assert url in message and wanted in message and sha256(b"tampered") in message
    assert files_under(tmp_path / "out") == []


def test_fetch_checks_md5_too(server, tmp_path):
    url = server.put("blob.bin", b"abc")
    with pytest.raises(ValueError, match=f"md5 check: expected {md5(b'xyz')}, got {md5(b'abc')}"):
        fetch.fetch(url, tmp_path / "blob.bin", md5=md5(b"xyz"))
    assert fetch.fetch(url, tmp_path / "blob.bin", md5=md5(b"abc")).read_bytes() == b"abc"


def test_fetch_404_is_a_clear_one_line_error(server, tmp_path):
    url = server.url + "nowhere.bin"
    with pytest.raises(FileNotFoundError) as err:
        fetch.fetch(url, tmp_path / "nowhere.bin", hint="do something else")
    message = str(err.value)
    assert url in message and "HTTP 404" in message and "do something else" in message
    assert "\n" not in message and files_under(tmp_path) == []


def test_fetch_unreachable_server_is_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.bin"
    with pytest.raises(FileNotFoundError, match=f"could not download {url}"):
        fetch.fetch(url, tmp_path / "file.bin", timeout=5)
    assert files_under(tmp_path) == []


def test_fetch_replaces_an_existing_file_atomically(server, tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"old")
    fetch.fetch(server.put("blob.bin", b"new"), tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == b"new"


# --------------------------------------------------------------------------- MNIST


def test_download_mnist_into_the_cache(server, monkeypatch, tmp_path):
    arrays = serve_mnist(server, monkeypatch)
    root = download.download_dataset("mnist")
    assert root == tmp_path / "home" / "data"
    assert files_under(root / "MNIST" / "raw") == sorted(download.MNIST_MD5)
    labels = data._read_idx(root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz", 2049)
    assert np.array_equal(labels, arrays["train-labels-idx1-ubyte.gz"])
    # present now: a second call, and ensure_dataset's lookup, fetch nothing
    asked = len(server.requests)
    assert download.ensure_dataset("mnist") == root
    assert len(server.requests) == asked


def test_load_mnist_download_fetches_only_the_split_and_loads(server, monkeypatch, tmp_path):
    arrays = serve_mnist(server, monkeypatch)
    x, y = load_mnist(tmp_path / "root", train=False, download=True)
    assert sorted(server.requests) == ["/mnist/t10k-images-idx3-ubyte.gz", "/mnist/t10k-labels-idx1-ubyte.gz"]
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte.gz"]).long())
    assert x.shape == (10000, 1, 28, 28)


def test_load_mnist_download_without_root_uses_the_cache_and_finds_it_again(server, monkeypatch, tmp_path):
    serve_mnist(server, monkeypatch)
    load_mnist(download=True)
    assert (tmp_path / "home" / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file()
    data.clear_cache()
    assert len(load_mnist()[0]) == 10000  # found in the cache without download=True


def test_mnist_bad_hash_keeps_nothing(server, monkeypatch, tmp_path):
    serve_mnist(server, monkeypatch)
    monkeypatch.setitem(download.MNIST_MD5, "t10k-images-idx3-ubyte.gz", "0" * 32)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz failed its md5 check"):
        download.ensure_dataset("mnist", tmp_path / "root", train=False)
    assert files_under(tmp_path / "root") == []


def test_mnist_404_names_url_and_fix(server, monkeypatch, tmp_path):
    monkeypatch.setenv("NRPM_MNIST_URL", server.url + "empty/")
    with pytest.raises(FileNotFoundError) as err:
        download.download_dataset("mnist", tmp_path / "root")
    message = str(err.value)
    assert server.url + "empty/train-images-idx3-ubyte.gz" in message and "HTTP 404" in message
    assert "--data-root" in message and "NRPM_MNIST_URL" in message


# --------------------------------------------------------------------------- CIFAR-10


def test_download_cifar10_extracts_and_loads(server, monkeypatch, tmp_path):
    serve_cifar(server, monkeypatch, cifar_archive())
    root = download.ensure_dataset("cifar-10", tmp_path / "root")
    assert files_under(root) == sorted(
        f"cifar-10-batches-py/{n}" for n in [*data.CIFAR10_TRAIN_BATCHES, "test_batch", "batches.meta"])
    x, y = load_cifar10(root, train=False)
    assert x.shape == (10000, 3, 32, 32)
    batch = pickle.loads(cifar_batch(10000, 0))
    assert y.tolist() == batch["labels"]


def test_load_cifar10_download_true(server, monkeypatch, tmp_path):
    serve_cifar(server, monkeypatch, cifar_archive())
    assert len(load_cifar10(tmp_path / "root", download=True)[0]) == 10000
    assert not (tmp_path / "root" / "cifar-10-python.tar.gz").exists()  # archive removed


def test_cifar10_archive_escaping_its_folder_is_refused(server, monkeypatch, tmp_path):
    evil = tar_gz({"cifar-10-batches-py/test_batch": cifar_batch(4, 0),
                   "cifar-10-batches-py/../../escaped.txt": b"gotcha"})
    serve_cifar(server, monkeypatch, evil)
    with pytest.raises(ValueError, match="refusing to extract.*escaped.txt"):
        download.download_dataset("cifar10", tmp_path / "a" / "root")
    assert files_under(tmp_path / "a") == []  # nothing extracted, archive removed


def test_cifar10_archive_with_a_link_is_refused(server, monkeypatch, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    serve_cifar(server, monkeypatch, buffer.getvalue())
    with pytest.raises(ValueError, match="link or special file"):
        download.download_dataset("cifar10", tmp_path / "root")


def test_cifar10_bad_md5_leaves_nothing(server, monkeypatch, tmp_path):
    serve_cifar(server, monkeypatch, cifar_archive(test_rows=4), patch_md5=False)
    with pytest.raises(ValueError) as err:
        download.download_dataset("cifar10", tmp_path / "root")
    assert "c58f30108f718f92721af3b95e74349a" in str(err.value)  # the published md5 is expected
    assert files_under(tmp_path / "root") == []


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="known: cifar10, mnist"):
        download.ensure_dataset("imagenet")


@pytest.mark.parametrize("name", ["cifar100", "svhn", "imagefolder:pics", "tensors:samples.pt"])
def test_datasets_that_cannot_be_downloaded_are_refused_naming_those_that_can(name, tmp_path):
    # the local-only fixture fails any URL, so reaching for the CIFAR-10 archive would fail differently
    with pytest.raises(ValueError, match="downloads only mnist and cifar10") as err:
        download.download_dataset(name, tmp_path / "root")
    assert repr(name) in str(err.value) and not (tmp_path / "root").exists()


def test_ensure_dataset_refuses_to_fetch_cifar100_and_user_data(tmp_path):
    with pytest.raises(ValueError, match="downloads only mnist and cifar10"):
        download.ensure_dataset("cifar100", tmp_path / "root")
    with pytest.raises(ValueError, match="your own files"):
        download.ensure_dataset("tensors:samples.pt")


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture
def served_lenet(server, monkeypatch, tmp_path):
    """A fresh LeNet's state_dict served as the released file, its sha256 patched in."""
    model = create_model("lenet")
    torch.save(model.state_dict(), tmp_path / "lenet.pth")
    content = (tmp_path / "lenet.pth").read_bytes()
    entry = registry.model_entry("lenet")
    server.put(f"weights/{entry.pretrained.file}", content)
    patched = dataclasses.replace(entry.pretrained, sha256=sha256(content))
    monkeypatch.setitem(registry._REGISTRY, "lenet", dataclasses.replace(entry, pretrained=patched))
    monkeypatch.setenv("NRPM_PRETRAINED_URL", server.url + "weights/")
    return model


def test_download_pretrained_then_load_pretrained_finds_it(served_lenet, tmp_path):
    path = hub.ensure_pretrained("lenet")
    assert path == tmp_path / "home" / "pretrained" / "lenet_mnist_model.pth"
    model, info = load_pretrained("lenet")  # no path: found in the cache by the lookup order
    assert info["source"] == str(path)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), served_lenet.eval()(x))


def test_ensure_pretrained_with_explicit_paths(served_lenet, server, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    assert hub.ensure_pretrained("lenet", folder) == folder / "lenet_mnist_model.pth"
    asked = len(server.requests)
    assert hub.ensure_pretrained("lenet", folder / "lenet_mnist_model.pth").is_file()
    custom = tmp_path / "custom.pth"
    custom.write_bytes(b"anything")
    assert hub.ensure_pretrained("lenet", custom) == custom  # existing file: as is
    assert len(server.requests) == asked
    with pytest.raises(FileNotFoundError, match="only the released lenet_mnist_model.pth"):
        hub.ensure_pretrained("lenet", tmp_path / "missing.pth")
    target = tmp_path / "new" / "lenet_mnist_model.pth"
    assert hub.ensure_pretrained("lenet", target) == target and target.is_file()


def test_ensure_pretrained_downloads_into_nrpm_pretrained(served_lenet, tmp_path, monkeypatch):
    monkeypatch.setenv("NRPM_PRETRAINED", str(tmp_path / "env"))
    assert hub.ensure_pretrained("lenet") == tmp_path / "env" / "lenet_mnist_model.pth"


def test_pretrained_bad_hash_leaves_no_file(server, monkeypatch, tmp_path):
    server.put("weights/lenet_mnist_model.pth", b"not the released file")
    monkeypatch.setenv("NRPM_PRETRAINED_URL", server.url + "weights")
    with pytest.raises(ValueError) as err:
        hub.download_pretrained("lenet")
    message = str(err.value)
    assert registry.model_entry("lenet").pretrained.sha256 in message
    assert server.url + "weights/lenet_mnist_model.pth" in message
    assert files_under(tmp_path / "home") == []


def test_pretrained_404_and_models_without_release(server, monkeypatch):
    monkeypatch.setenv("NRPM_PRETRAINED_URL", server.url)
    with pytest.raises(FileNotFoundError, match="HTTP 404.*NRPM_PRETRAINED"):
        hub.ensure_pretrained("mlp3")
    with pytest.raises(ValueError, match="no released checkpoint for model 'resnet34'"):
        hub.ensure_pretrained("resnet34")


def test_pretrained_url_defaults_to_the_registry():
    assert hub.pretrained_url("lenet") == registry.model_entry("lenet").pretrained.url
    assert hub.pretrained_url("lenet").startswith(registry.OFFICIAL_RAW_URL)


def test_downloaded_truncated_checkpoint_is_a_value_error(server, monkeypatch, tmp_path):
    torch.save(create_model("lenet").state_dict(), tmp_path / "whole.pth")
    content = (tmp_path / "whole.pth").read_bytes()[:100]
    entry = registry.model_entry("lenet")
    server.put("w/lenet_mnist_model.pth", content)
    patched = dataclasses.replace(entry.pretrained, sha256=sha256(content))
    monkeypatch.setitem(registry._REGISTRY, "lenet", dataclasses.replace(entry, pretrained=patched))
    monkeypatch.setenv("NRPM_PRETRAINED_URL", server.url + "w/")
    with pytest.raises(ValueError, match="is not readable by torch.load"):
        load_pretrained("lenet", path=hub.ensure_pretrained("lenet"))


# --------------------------------------------------------------------------- lookup order


def complete_mnist(root: Path) -> Path:
    """Empty files with the MNIST names: enough for the lookup, which only checks presence."""
    for name in download.MNIST_MD5:
        (root / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        (root / "MNIST" / "raw" / name).write_bytes(b"")
    return root


@pytest.fixture
def fake_checkout(tmp_path, monkeypatch):
    """A source checkout at tmp/repo with its shared mirror at tmp/shared."""
    repo = tmp_path / "repo"
    (repo / "src" / "nrpm").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'nrpm'\n")
    monkeypatch.setattr(paths, "source_checkout", lambda package_dir=None: repo)
    return tmp_path / "shared"


def test_data_lookup_order(tmp_path, monkeypatch, fake_checkout):
    cache = tmp_path / "home" / "data"
    shared = fake_checkout / "data"
    assert resolve_data_root() == cache  # nothing anywhere: the cache path (--download target)
    complete_mnist(shared)
    assert resolve_data_root() == shared
    assert resolve_data_root(dataset="cifar10") == cache  # the mirror lacks CIFAR-10
    complete_mnist(cache)
    assert resolve_data_root() == cache  # the cache wins when it holds the files
    monkeypatch.setenv("NRPM_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"  # env: used as given, even if empty
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"


def test_incomplete_cache_falls_through_to_the_mirror(tmp_path, fake_checkout):
    complete_mnist(fake_checkout / "data")
    (tmp_path / "home" / "data" / "MNIST" / "raw").mkdir(parents=True)  # started, not finished
    assert resolve_data_root(dataset="mnist") == fake_checkout / "data"


def test_pretrained_lookup_order(tmp_path, monkeypatch, fake_checkout):
    cache, shared = tmp_path / "home" / "pretrained", fake_checkout / "pretrained"
    assert resolve_pretrained_dir() == cache
    shared.mkdir(parents=True)
    (shared / "lenet_mnist_model.pth").write_bytes(b"")
    assert resolve_pretrained_dir(name="lenet") == shared
    assert resolve_pretrained_dir(name="mlp3") == cache
    cache.mkdir(parents=True)
    (cache / "lenet_mnist_model.pth").write_bytes(b"")
    assert resolve_pretrained_dir(name="lenet") == cache
    monkeypatch.setenv("NRPM_PRETRAINED", str(tmp_path / "env"))
    assert resolve_pretrained_dir() == tmp_path / "env"
    assert resolve_pretrained_dir(tmp_path / "flag") == tmp_path / "flag"


def test_not_found_message_lists_the_places_looked_in(tmp_path, fake_checkout):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist()
    message = str(err.value)
    assert str(tmp_path / "home" / "data") in message and str(fake_checkout / "data") in message
    assert "--data-root" in message and "NRPM_DATA" in message and "--download" in message


def test_source_checkout_only_for_the_src_layout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src" / "nrpm").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "nrpm"
    site.mkdir(parents=True)
    assert REAL_SOURCE_CHECKOUT(repo / "src" / "nrpm") == repo
    assert REAL_SOURCE_CHECKOUT(site) is None
    assert REAL_SOURCE_CHECKOUT(tmp_path / "src" / "nrpm") is None  # src/ but no pyproject.toml


def test_installed_package_never_looks_beside_site_packages(tmp_path, monkeypatch):
    # What the old parents[3] rule found for .../site-packages/nrpm/models/checkpoints.py:
    # .../lib/shared/pretrained. Put the files there; an installed package must not use them.
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "nrpm"
    site.mkdir(parents=True)
    decoy = tmp_path / "venv" / "lib" / "shared" / "pretrained"
    decoy.mkdir(parents=True)
    (decoy / "lenet_mnist_model.pth").write_bytes(b"")
    # the real source_checkout, run as if the package were installed in site-packages
    monkeypatch.setattr(paths, "source_checkout", REAL_SOURCE_CHECKOUT)
    monkeypatch.setattr(paths, "_PACKAGE_DIR", site)
    assert paths.source_checkout() is None and paths.shared_mirror("pretrained") is None
    folder = resolve_pretrained_dir(name="lenet")
    assert folder == tmp_path / "home" / "pretrained"
    assert "site-packages" not in str(folder) and decoy != folder


def test_this_checkout_is_recognised(monkeypatch):
    monkeypatch.setattr(paths, "source_checkout", REAL_SOURCE_CHECKOUT)
    repo = Path(paths.__file__).resolve().parents[2]
    if not (repo / "pyproject.toml").is_file():
        pytest.skip("nrpm is not running from a source checkout")
    assert paths.source_checkout() == repo
    assert paths.shared_mirror("data") == repo.parent / "shared" / "data"
