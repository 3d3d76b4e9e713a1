"""Datasets, the search split and batch loaders, shared by all stages.

In-memory datasets (CIFAR-10/100, Fashion-MNIST, ImageNet16-120, synthetic) are held as one uint8 tensor
(N, C, H, W) and augmented a whole batch at a time by `BatchLoader` (random crop with zero
padding, horizontal flip, optional cutout; the same distributions as torchvision's RandomCrop /
RandomHorizontalFlip and DARTS' Cutout). Its randomness comes from a generator seeded by
(seed, epoch), so a run is reproducible and resumes exactly at any epoch boundary, on CPU or GPU.
ImageNet (ImageFolder trees) goes through torchvision transforms and a DataLoader instead.
"""
import dataclasses
import gzip
import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inputs import SEED_MAX, number
from seeding import derive_seed
from utils import UserError, atomic_write_text

# Per-channel mean / std of the raw images in [0, 1].
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4824, 0.4467), (0.2471, 0.2435, 0.2616)  # (125.3, 123.0, 113.9)/255 ...
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # (129.3, 124.1, 112.4)/255 ...
FMNIST_MEAN, FMNIST_STD = (0.2190,) * 3, (0.3318,) * 3      # of the images padded to 32x32
SYNTHETIC_MEAN, SYNTHETIC_STD = (0.5,) * 3, (0.25,) * 3
IMAGENET16_MEAN = (122.68 / 255, 116.66 / 255, 104.01 / 255)        # NAS-Bench-201's values
IMAGENET16_STD = (63.22 / 255, 61.26 / 255, 65.09 / 255)

DATASETS = ['cifar10', 'cifar100', 'fashion-mnist', 'imagenet16-120', 'synthetic']
DEFAULT_ROOTS = {'cifar10': './data', 'cifar100': './data', 'fashion-mnist': '/usr/share/datasets/fashion-mnist',
                 'imagenet16-120': './data/ImageNet16', 'synthetic': None}
IMAGE_SIZES = {'imagenet16-120': 16}                    # the others are 32x32
FMNIST_FILES = {True: ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
                False: ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
SYNTHETIC_SIZES = {True: 2048, False: 512}
# The 16x16 downsampled ImageNet (Chrabaszcz et al. 2017) as NAS-Bench-201 uses it: pickled dicts with
# 'data' (N, 3*16*16) uint8, channel-major, and 'labels' 1..1000; ImageNet16-120 keeps labels 1..120.
IMAGENET16_FILES = {True: [f'train_data_batch_{i}' for i in range(1, 11)], False: ['val_data']}
IMAGENET16_CLASSES = 120


@dataclass
class ArrayData:
    images: torch.Tensor        # uint8 (N, C, H, W), C = 1 (expanded to 3 when batched) or 3
    labels: torch.Tensor        # int64 (N,)
    num_classes: int
    mean: tuple
    std: tuple
    crop_pad: int = 4           # zero padding of the random-crop augmentation (NAS-Bench-201: 2 for 16x16)

    def __len__(self):
        return len(self.labels)

    def to(self, device):
        """The same data held on `device` (on a GPU: the whole split resident, batches never copied)."""
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))


# --- loading ------------------------------------------------------------------------------------------

def load_arrays(dataset, root=None, train=True, download=False):
    """The training (train=True) or test set of `dataset` as ArrayData."""
    if dataset not in DATASETS:
        raise UserError(f'unknown --dataset {dataset!r}; choose one of {", ".join(DATASETS)}')
    root = root if root is not None else DEFAULT_ROOTS[dataset]
    if dataset in ('cifar10', 'cifar100'):
        return _load_cifar(dataset, root, train, download)
    if dataset == 'fashion-mnist':
        return _load_fashion_mnist(root, train)
    if dataset == 'imagenet16-120':
        return _load_imagenet16(root, train)
    return synthetic_arrays(SYNTHETIC_SIZES[train], seed=0 if train else 1)


def _load_cifar(dataset, root, train, download):
    import torchvision
    folder = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}[dataset]
    cls = {'cifar10': torchvision.datasets.CIFAR10, 'cifar100': torchvision.datasets.CIFAR100}[dataset]
    name = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}[dataset]
    if not download and not os.path.isdir(os.path.join(root, folder)):
        raise UserError(f'{name} not found: expected the extracted python version in {os.path.join(root, folder)}; '
                        f'point --data at its parent folder, or add --download on a machine with internet')
    try:
        ds = cls(root=root, train=train, download=download)
    except RuntimeError as e:
        raise UserError(f'{name} in {os.path.join(root, folder)} is incomplete or corrupted ({e}); '
                        f're-extract the archive there, or add --download on a machine with internet')
    except OSError as e:
        raise UserError(f'cannot get {name} into {root} ({e}); without internet, place the extracted archive there')
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == 'cifar10' else (CIFAR100_MEAN, CIFAR100_STD)
    return ArrayData(images, torch.tensor(ds.targets, dtype=torch.long), len(ds.classes), mean, std)


def _read_idx(root, name):
    """An idx file (optionally .gz) as a numpy uint8 array of its declared shape."""
    for path, opener in ((os.path.join(root, name + '.gz'), gzip.open), (os.path.join(root, name), open)):
        if os.path.isfile(path):
            break
    else:
        raise UserError(f'Fashion-MNIST file {name}.gz not found in {root}; install it with '
                        '`apt-get install -y dataset-fashion-mnist` or point --data at the folder holding the four '
                        'idx files')
    try:
        with opener(path, 'rb') as f:
            raw = f.read()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
        arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if raw[:3] != b'\x00\x00\x08' or arr.size != math.prod(dims):
            raise ValueError(f'{arr.size} values for shape {dims}')
    except (OSError, EOFError, ValueError, IndexError) as e:
        raise UserError(f'Fashion-MNIST file {path} is truncated or corrupted ({e}); reinstall it with '
                        '`apt-get install --reinstall -y dataset-fashion-mnist`')
    return arr.reshape(dims)


def _load_fashion_mnist(root, train):
    img_name, lbl_name = FMNIST_FILES[train]
    images = _read_idx(root, img_name)
    labels = _read_idx(root, lbl_name)
    if len(images) != len(labels):
        raise UserError(f'Fashion-MNIST in {root}: {len(images)} images but {len(labels)} labels; reinstall it')
    # (N, 28, 28) -> (N, 1, 32, 32): zero padding of 2 so the CIFAR networks run unchanged.
    x = F.pad(torch.from_numpy(images.copy()).unsqueeze(1), (2, 2, 2, 2))
    return ArrayData(x, torch.from_numpy(labels.astype(np.int64)), 10, FMNIST_MEAN, FMNIST_STD)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only, so a data file cannot run code."""
    ALLOWED = {(f'numpy.{core}.{m}', n) for core in ('core', '_core')
               for m, n in (('multiarray', '_reconstruct'), ('multiarray', 'scalar'), ('numeric', '_frombuffer'))}
    ALLOWED |= {('numpy', 'ndarray'), ('numpy', 'dtype')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a data file')
        return super().find_class(module, name)


def _load_imagenet16(root, train):
    images, labels = [], []
    for name in IMAGENET16_FILES[train]:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise UserError(f'ImageNet16-120 file {name} not found in {root}: expected train_data_batch_1 .. 10 and '
                            'val_data of the 16x16 downsampled ImageNet (the files NAS-Bench-201 uses); point --data '
                            'at their folder')
        try:
            with open(path, 'rb') as f:
                entry = _ArrayUnpickler(f, encoding='latin1').load()
            x = np.asarray(entry['data'], dtype=np.uint8).reshape(-1, 3, 16, 16)
            y = np.asarray(entry['labels'], dtype=np.int64).reshape(-1)
            if len(x) != len(y):
                raise ValueError(f'{len(x)} images but {len(y)} labels')
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f'ImageNet16-120 file {path} is truncated or corrupted ({e}); download it again')
        keep = (y >= 1) & (y <= IMAGENET16_CLASSES)
        images.append(x[keep])
        labels.append(y[keep] - 1)
    return ArrayData(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                     IMAGENET16_CLASSES, IMAGENET16_MEAN, IMAGENET16_STD, crop_pad=2)


def synthetic_arrays(n, num_classes=10, size=32, seed=0):
    """Learnable toy images: each class is a fixed smooth colour pattern (the same for every split),
    each image that pattern, randomly shifted, plus noise."""
    g = torch.Generator().manual_seed(12345)
    templates = F.interpolate(torch.randn(num_classes, 3, 4, 4, generator=g), size=size, mode='bilinear',
                              align_corners=False)                       # (K, 3, size, size)
    g.manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    shifts = torch.randint(-3, 4, (n, 2), generator=g)
    x = templates[labels]
    x = torch.stack([torch.roll(img, (int(dy), int(dx)), (1, 2)) for img, (dy, dx) in zip(x, shifts)])
    x = 0.5 + 0.2 * x + 0.15 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ArrayData(images, labels, num_classes, SYNTHETIC_MEAN, SYNTHETIC_STD)


# --- the search split ---------------------------------------------------------------------------------

def seeded_split(n, train_portion=0.5, seed=0):
    """Disjoint (train, valid) index tensors: a seeded permutation cut at train_portion * n."""
    if not 0 < train_portion < 1:
        raise UserError(f'--train_portion must lie strictly between 0 and 1, got {train_portion}')
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * train_portion))
    return perm[:cut].clone(), perm[cut:].clone()


def read_split_file(path, n):
    """A NAS-Bench-201 split file: {"train": ["int", ["0", ...]], "valid": ["int", [...]]}."""
    try:
        with open(path) as f:
            doc = json.load(f)
        train, valid = ([int(i) for i in doc[k][1]] for k in ('train', 'valid'))
    except OSError as e:
        raise UserError(f'cannot read --split_file {path}: {e.strerror}')
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f'--split_file {path} is not in the NAS-Bench-201 format '
                        f'{{"train": ["int", ["0", ...]], "valid": ["int", [...]]}} ({e!r})')
    bad = [i for i in train + valid if not 0 <= i < n]
    if bad or set(train) & set(valid):
        raise UserError(f'--split_file {path} does not fit a training set of {n} images '
                        f'({"index " + str(bad[0]) + " out of range" if bad else "train and valid overlap"})')
    return torch.tensor(train, dtype=torch.long), torch.tensor(valid, dtype=torch.long)


# NAS-Bench-201's fixed halves of the CIFAR training set (MIT licence, see splits/README.md): the split the
# reference trains its supernets on (train half) and scores candidates against (valid half).
SPLITS_DIR = Path(__file__).resolve().parent / 'splits'
NB201_SPLIT_FILES = {'cifar10': 'cifar-split.txt', 'cifar100': 'cifar100-split.txt'}
SPLIT_CHOICES = ['auto', 'nb201', 'seeded']
SPLIT_FLAGS = ('split', 'split_file', 'split_seed', 'train_portion')    # the flags that choose a split


@dataclass(frozen=True)
class Split:
    """Which train / valid halves of the training set a run uses (`resolve_split` picks it from the flags)."""
    kind: str                   # 'nb201' (the dataset's NAS-Bench-201 file), 'file', 'seeded', 'none' (split_data 0)
    path: str = None            # the split file of 'nb201' / 'file'
    seed: int = 0               # 'seeded' only
    portion: float = 0.5

    def describe(self):
        if self.kind == 'nb201':
            return f'the NAS-Bench-201 split file {Path(self.path).name}'
        if self.kind == 'file':
            return f'the split file {self.path}'
        if self.kind == 'seeded':
            return f'a seeded split (--split_seed {self.seed}, --train_portion {self.portion})'
        return 'the whole training set (--split_data 0; the test set validates)'

    def indices(self, n):
        """(train, valid) index tensors for a training set of n images; a split that leaves either part empty
        is refused (nothing would train, or every validation would read 0)."""
        if self.kind == 'none':
            return torch.arange(n), torch.arange(0)
        parts = read_split_file(self.path, n) if self.kind in ('nb201', 'file') else seeded_split(n, self.portion,
                                                                                               self.seed)
        fix = ('choose a --train_portion that leaves images in both parts' if self.kind == 'seeded' else
               'pass a split file that lists both train and valid indices')
        for name, idx in zip(('train', 'valid'), parts):
            if len(idx) == 0:
                raise UserError(f'{self.describe()} leaves the {name} part of the {n} training images empty; {fix}')
        return parts


def choose_split(args):
    """The split the data flags ask for, without touching `args`. --split auto: the NAS-Bench-201 file on
    cifar10 / cifar100 unless --split_seed is given, else a seeded split."""
    kind = getattr(args, 'split', None) or 'auto'
    seed, portion = getattr(args, 'split_seed', None), getattr(args, 'train_portion', None)
    if not args.split_data:
        return Split('none')
    if getattr(args, 'split_file', None):
        return Split('file', str(args.split_file))
    if kind == 'nb201' or (kind == 'auto' and args.dataset in NB201_SPLIT_FILES and seed is None):
        if args.dataset not in NB201_SPLIT_FILES:
            raise UserError(f'--split nb201 exists for cifar10 and cifar100 only; use --split seeded for '
                            f'{args.dataset}')
        if portion not in (None, 0.5):
            raise UserError(f'--train_portion {portion} applies to a seeded split, but {args.dataset} uses the fixed '
                            f'25k/25k NAS-Bench-201 split; add --split seeded to cut it at {portion}')
        return Split('nb201', str(SPLITS_DIR / NB201_SPLIT_FILES[args.dataset]))
    return Split('seeded', seed=0 if seed is None else seed, portion=0.5 if portion is None else portion)


def split_flag_values(split):
    """The flag values that record a resolved split (--split becomes its kind), as a run's args store them."""
    return {'split': split.kind, 'split_seed': split.seed, 'train_portion': split.portion}


def resolve_split(args):
    """choose_split, with the resolved values written back into args (args.split becomes the kind, --split_seed /
    --train_portion their values) so that the checkpoints of stage 1, which owns its args, record what was used."""
    split = choose_split(args)
    vars(args).update(split_flag_values(split))
    return split


def split_flags_given(args):
    """True when the user chose a split (any of SPLIT_FLAGS away from its 'not given' value)."""
    return getattr(args, 'split', None) not in (None, 'auto') or any(
        getattr(args, k, None) is not None for k in ('split_file', 'split_seed', 'train_portion'))


def inherited_split_flags(args, trained_args):
    """The split flags a stage-1 run recorded in its args, as a dict, where `args` gives no split flags (resume,
    search); {} otherwise. Runs of this project from before --split existed used a seeded split or --split_file."""
    if split_flags_given(args) or not trained_args:
        return {}
    flags = {'split': trained_args.get('split') or ('file' if trained_args.get('split_file') else 'seeded')}
    for k, default in (('split_file', None), ('split_seed', 0), ('train_portion', 0.5)):
        flags[k] = trained_args.get(k, default)
    return flags


def inherit_split(args, trained_args):
    """inherited_split_flags written into args (stage 1 resuming, which owns its args)."""
    vars(args).update(inherited_split_flags(args, trained_args))


def split_digest(train_idx):
    """A short fingerprint of the set of training indices (order-free): equal iff the halves are equal."""
    idx = np.sort(torch.as_tensor(train_idx).cpu().numpy().astype('<i8'))
    return hashlib.sha256(idx.tobytes()).hexdigest()[:16]


def write_split_file(path, train_idx, valid_idx):
    doc = {'train': ['int', [str(int(i)) for i in train_idx]], 'valid': ['int', [str(int(i)) for i in valid_idx]]}
    atomic_write_text(path, json.dumps(doc))


def add_data_args(parser, default_dataset='cifar100'):
    """The data flags shared by stage 1 and stage 2 (defaults are shown by --help)."""
    g = parser.add_argument_group('data')
    g.add_argument('--dataset', default=default_dataset, choices=DATASETS,
                   help='dataset; the reference hard-codes cifar100')
    g.add_argument('--data', default=None,
                   help='dataset folder; None means ./data for CIFAR, /usr/share/datasets/fashion-mnist '
                        'for Fashion-MNIST and ./data/ImageNet16 for ImageNet16-120')
    g.add_argument('--download', action='store_true', help='download CIFAR with torchvision (needs internet)')
    g.add_argument('--split_data', type=int, default=1, choices=[0, 1],
                   help='1: train on one part of the training set, validate on the other; '
                        '0: train on all of it, validate on the test set')
    g.add_argument('--split', default='auto', choices=SPLIT_CHOICES,
                   help='auto: the NAS-Bench-201 split file on cifar10 / cifar100 (as the reference; shipped in '
                        'splits/), a seeded split on the other datasets or when --split_seed is given; nb201; seeded')
    g.add_argument('--train_portion', type=float, default=None,
                   help='fraction of the training set in the train part of a seeded split (None: 0.5, 25k/25k on '
                        'CIFAR)')
    g.add_argument('--split_seed', type=int, default=None,
                   help='seed of a seeded split (None: 0); giving it chooses a seeded split')
    g.add_argument('--split_file', default=None,
                   help='NAS-Bench-201 format split JSON to use instead')
    g.add_argument('--train_subset', type=int, default=0, help='use only the first N images of the train part (0: all)')
    g.add_argument('--valid_subset', type=int, default=0, help='use only the first N images of the valid part (0: all)')
    g.add_argument('--random_label', type=int, default=0, choices=[0, 1],
                   help='1: replace every training label by a seeded random class, as RLNAS')
    return g


@dataclass
class SearchData:
    train: ArrayData            # the training set (labels randomized when asked)
    train_idx: torch.Tensor     # indices of the train part
    valid: ArrayData            # the training set again (split_data 1) or the test set (split_data 0)
    valid_idx: torch.Tensor
    num_classes: int
    split: Split = Split('none')
    split_digest: str = ''      # split_digest of the whole train part (before --train_subset)

    def resident(self, device):
        """On a GPU, the images once on the device (uint8: 150 MB for CIFAR); on a CPU, unchanged."""
        if torch.device(device).type != 'cuda':
            return self
        train = self.train.to(device)
        if self.valid.images is self.train.images:      # the valid part of the same images (true labels)
            valid = dataclasses.replace(self.valid, images=train.images, labels=self.valid.labels.to(device))
        else:
            valid = self.valid.to(device)
        return dataclasses.replace(self, train=train, valid=valid)

    def split_record(self):
        """What a stage-1 checkpoint stores so that stage 2 can check it scores on the same split."""
        return {'split': self.split.describe(), 'split_digest': self.split_digest}


def load_search_data(args):
    """Training set, split into train / valid parts as the data flags say (stage 1 and 2). The resolved split
    flags are written into `args` (resolve_split): stage 1 records them; stage 2 passes a namespace of its own."""
    for flag in ('train_subset', 'valid_subset'):
        if getattr(args, flag) < 0:
            raise UserError(f'--{flag} must be >= 0 (0 = all images), got {getattr(args, flag)}')
    number('--split_seed', getattr(args, 'split_seed', None), lo=0, hi=SEED_MAX)
    split = resolve_split(args)
    train = load_arrays(args.dataset, args.data, train=True, download=args.download)
    valid = train               # the valid part keeps the true labels: the reference randomizes the train part only
    if args.random_label:
        g = torch.Generator().manual_seed(derive_seed('random_label', args.split_seed))
        train = dataclasses.replace(train, labels=torch.randint(0, train.num_classes, (len(train),), generator=g))
    train_idx, valid_idx = split.indices(len(train))
    if split.kind == 'none':
        valid = load_arrays(args.dataset, args.data, train=False, download=args.download)
        valid_idx = torch.arange(len(valid))
    digest = split_digest(train_idx)
    if args.train_subset:
        train_idx = train_idx[:args.train_subset]
    if args.valid_subset:
        valid_idx = valid_idx[:args.valid_subset]
    return SearchData(train, train_idx, valid, valid_idx, train.num_classes, split, digest)


# --- batches ------------------------------------------------------------------------------------------

def to_device(t, device):
    """t (drawn or indexed on the CPU) on `device`: to a GPU a non-blocking copy from pinned memory, so the host
    goes on queueing work; elsewhere t.to(device) (a no-op for a CPU tensor on the CPU)."""
    device = torch.device(device)
    if device.type == 'cuda' and t.device.type == 'cpu':
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def augment_batch(x, generator, pad=4, flip=True, cutout=0):
    """Random crop (zero padding `pad`), horizontal flip on a float batch (B, C, H, W) in [0, 255]
    or normalized units; offsets and flips drawn from the CPU `generator`. Cutout is separate."""
    B, C, H, W = x.shape
    if pad:
        oy = to_device(torch.randint(0, 2 * pad + 1, (B,), generator=generator), x.device)
        ox = to_device(torch.randint(0, 2 * pad + 1, (B,), generator=generator), x.device)
        padded = F.pad(x, (pad, pad, pad, pad))                             # (B, C, H+2p, W+2p)
        rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = padded[b, c, rows, cols]
    if flip:
        mask = to_device(torch.rand(B, generator=generator) < 0.5, x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def cutout_batch(x, length, generator):
    """DARTS cutout: zero a length x length square (clipped at the border) around a uniform centre."""
    B, _, H, W = x.shape
    cy = to_device(torch.randint(0, H, (B,), generator=generator), x.device)
    cx = to_device(torch.randint(0, W, (B,), generator=generator), x.device)
    ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_rows = (ys >= (cy - length // 2).clamp(0, H)[:, None]) & (ys < (cy + length // 2).clamp(0, H)[:, None])
    in_cols = (xs >= (cx - length // 2).clamp(0, W)[:, None]) & (xs < (cx + length // 2).clamp(0, W)[:, None])
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])                   # (B, H, W)
    return x * keep[:, None].to(x.dtype)


class BatchLoader:
    """Batches of (normalized float images (B, 3, H, W), labels (B,)) from ArrayData[indices].

    shuffle/augment draw from a generator seeded by derive_seed(seed, epoch) (see set_epoch), so
    epoch e yields the same batches in every run. rank/world_size shard each epoch's order like
    DistributedSampler: padded by wrapping so every rank gets the same number of batches
    (even_shards=True, for training), or disjoint without padding (False: exact evaluation).
    """

    def __init__(self, data, indices, batch_size, device, shuffle=False, augment=False, cutout=0, seed=0,
                 rank=0, world_size=1, drop_last=False, memory_format=torch.contiguous_format, even_shards=True):
        self.data, self.indices = data, torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.device = batch_size, device
        self.shuffle, self.augment, self.cutout = shuffle, augment, cutout
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.memory_format = memory_format
        self.even_shards = even_shards
        mean = torch.tensor(data.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        std = torch.tensor(data.std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
        self._mean, self._inv_std = mean, 1.0 / std

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _order(self, generator):
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=generator)]
        if self.world_size > 1:
            if self.even_shards:
                per_rank = math.ceil(len(order) / self.world_size)
                order = torch.cat([order, order[:per_rank * self.world_size - len(order)]])
            order = order[self.rank::self.world_size]
        return order

    def __len__(self):
        n = len(self.indices)
        n = math.ceil(n / self.world_size) if self.even_shards else len(range(self.rank, n, self.world_size))
        # A trailing training batch of one image is dropped: train-mode BN cannot normalize it.
        if self.drop_last or (self.augment and n % self.batch_size == 1):
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def batch(self, idx, generator=None):
        """One batch for the given dataset indices, on the device, normalized (and augmented)."""
        idx = to_device(idx, self.data.images.device)      # resident images (a GPU): a non-blocking copy
        x = to_device(self.data.images[idx], self.device).float()   # (B, C, H, W) in [0, 255]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.augment:
            x = augment_batch(x, generator, pad=self.data.crop_pad)
        x = (x - self._mean) * self._inv_std
        if self.augment and self.cutout:
            x = cutout_batch(x, self.cutout, generator)
        x = x.contiguous(memory_format=self.memory_format)
        return x, to_device(self.data.labels[idx], self.device)

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank))
        order = self._order(torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.batch(idx, g)


# --- ImageNet (ImageFolder trees) ---------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# AlexNet's PCA of ImageNet RGB pixels, used for lighting noise.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class Lighting:
    """AlexNet-style PCA lighting noise on a (3, H, W) tensor: adds eigvec @ (alpha * eigval) with
    alpha ~ N(0, alphastd) per image."""

    def __init__(self, alphastd=0.1, eigval=IMAGENET_PCA_EIGVAL, eigvec=IMAGENET_PCA_EIGVEC):
        self.alphastd = alphastd
        self.eigval, self.eigvec = torch.tensor(eigval), torch.tensor(eigvec)

    def __call__(self, img):
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = (self.eigvec * alpha.view(1, 3) * self.eigval.view(1, 3)).sum(1)
        return img + rgb.view(3, 1, 1)


IMAGENET_PIPELINES = ['reference', 'torchvision']


def imagenet_transforms(train, normalize=True, pipeline='reference'):
    """pipeline 'reference' (imagenet_reference.py): square crop resized to 224 without anti-aliasing,
    quantized lighting, flip; eval: shorter side 256 by the same interpolation, centre crop 224.
    'torchvision': RandomResizedCrop 224 (scale 0.08-1, aspect jitter), flip, to-tensor, lighting; eval:
    anti-aliased Resize(256), CenterCrop(224). Normalized with the ImageNet mean/std unless normalize=False
    (the reference feeds raw [0, 1] pixels; its model zoo needs that)."""
    import torchvision.transforms as T
    if pipeline == 'reference':
        import imagenet_reference as R
        steps = [T.PILToTensor()]            # uint8 (3, H, W); ImageFolder's loader gives RGB
        steps += ([R.SquareCropResize(224), R.QuantizedLighting(IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, 0.1),
                   T.RandomHorizontalFlip()] if train else [R.ShorterSideResize(256), T.CenterCrop(224)])
        steps.append(T.ConvertImageDtype(torch.float32))                       # / 255
    else:
        steps = ([T.RandomResizedCrop(224, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), Lighting(0.1)]
                 if train else [T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    if normalize:
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(steps)


def imagenet_folders(root, normalize=True, pipeline='reference'):
    """(train, val) ImageFolder datasets under root/train and root/val."""
    import torchvision
    missing = [os.path.join(root or '', d) for d in ('train', 'val') if not os.path.isdir(os.path.join(root or '', d))]
    if root is None or missing:
        problem = 'no --data_root given' if root is None else 'missing ' + ', '.join(missing)
        raise UserError(f'ImageNet needs --data_root with train/ and val/ ImageFolder trees (one folder per class); '
                        f'{problem}')
    try:
        train = torchvision.datasets.ImageFolder(os.path.join(root, 'train'),
                                                 imagenet_transforms(True, normalize, pipeline))
        val = torchvision.datasets.ImageFolder(os.path.join(root, 'val'),
                                               imagenet_transforms(False, normalize, pipeline))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f'cannot read ImageNet from {root}: {e}')
    if train.classes != val.classes:
        raise UserError(f'{root}/train and {root}/val have different class folders '
                        f'({len(train.classes)} vs {len(val.classes)})')
    return train, val
