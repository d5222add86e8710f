"""Datasets as in-memory tensors, plus batching and CIFAR augmentation.

Everything is plain torch/numpy: no torchvision. Images come back as float32 in [0, 1] with shape
(N, C, H, W); models carry any normalisation themselves (or get it from ``--normalize``).

* Named datasets (:mod:`.named`), in torchvision's layouts under a data root: MNIST
  (``<root>/MNIST/raw/*-ubyte[.gz]``), CIFAR-10 (``<root>/cifar-10-batches-py/``), CIFAR-100
  (``<root>/cifar-100-python/{train,test}``) and SVHN (``<root>/{train,test}_32x32.mat``, needs scipy).
  The root is found by :func:`resolve_data_root` (:mod:`nrpm.paths`' order); only MNIST and CIFAR-10
  can be downloaded (``download=True`` / ``--download``, see :mod:`nrpm.data.download`).
* A user's own data: ``tensors:FILE`` (:mod:`.tensors`) and ``imagefolder:PATH`` (:mod:`.imagefolder`).
* :func:`load_samples` reads the N samples of a split (test / val) of any of them (:mod:`.sources`).
"""

from .batching import batches, random_crop_flip, subset
from .cifar import CIFAR10_DIR, CIFAR10_ROWS_PER_BATCH, CIFAR10_TEST_BATCHES, CIFAR10_TRAIN_BATCHES, CIFAR100_DIR
from .cifar import read_cifar_batch as _read_cifar_batch  # the names of the single-module nrpm.data, kept for callers
from .common import MissingDependency
from .imagefolder import IMAGE_EXTENSIONS, load_imagefolder
from .mnist import MNIST_FILES
from .mnist import read_idx as _read_idx
from .datasets import clear_cache, load_cifar10, load_cifar100, load_dataset, load_mnist, load_svhn
from .named import DATASETS, DOWNLOADABLE, dataset_key, list_datasets, missing_files, resolve_data_root
from .sources import DataSpec, Samples, load_samples, parse_data_spec
from .svhn import SVHN_FILES
from .tensors import load_tensor_file

__all__ = [
    "resolve_data_root",
    "load_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_svhn",
    "load_dataset",
    "list_datasets",
    "dataset_key",
    "missing_files",
    "subset",
    "batches",
    "random_crop_flip",
    "clear_cache",
    "load_samples",
    "parse_data_spec",
    "DataSpec",
    "Samples",
    "load_tensor_file",
    "load_imagefolder",
    "MissingDependency",
    "DATASETS",
    "DOWNLOADABLE",
    "MNIST_FILES",
    "CIFAR10_DIR",
    "CIFAR10_TRAIN_BATCHES",
    "CIFAR10_TEST_BATCHES",
    "CIFAR10_ROWS_PER_BATCH",
    "CIFAR100_DIR",
    "SVHN_FILES",
    "IMAGE_EXTENSIONS",
]
