import argparse
import dataclasses
import gzip
import pickle
import shutil

import pytest
import torch
import torch.nn.functional as F

import data as D
from conftest import imagenet16_entry, split_file_halves
from utils import UserError


def test_seeded_split_is_disjoint_complete_and_scaled():
    tr, va = D.seeded_split(50000, 0.5, seed=0)
    assert len(tr) == len(va) == 25000
    assert len(set(tr.tolist()) | set(va.tolist())) == 50000
    tr2, _ = D.seeded_split(50000, 0.5, seed=0)
    assert torch.equal(tr, tr2)
    tr3, va3 = D.seeded_split(60000, 0.5, seed=1)
    assert len(tr3) == len(va3) == 30000 and not torch.equal(tr3[:100], tr[:100])


def test_split_file_roundtrip_and_errors(tmp_path):
    tr, va = D.seeded_split(100, 0.5, 3)
    D.write_split_file(tmp_path / 's.json', tr, va)
    tr2, va2 = D.read_split_file(tmp_path / 's.json', 100)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    with pytest.raises(UserError, match='does not fit'):
        D.read_split_file(tmp_path / 's.json', 50)
    (tmp_path / 'bad.json').write_text('{"train": [1, 2]}')
    with pytest.raises(UserError, match='NAS-Bench-201'):
        D.read_split_file(tmp_path / 'bad.json', 100)


def test_augment_crops_are_windows_of_the_zero_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 3, 8, 8) + 1.0                # strictly positive, so padding is recognisable
    y = D.augment_batch(x, g, pad=4, flip=True)
    padded = F.pad(x, (4, 4, 4, 4))
    offsets, flips = set(), 0
    for i in range(len(x)):
        found = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                 if torch.equal(y[i], (padded[i, :, dy:dy + 8, dx:dx + 8].flip(2) if f
                                       else padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert found, i
        dy, dx, f = found[0]
        offsets.add((dy, dx))
        flips += f
    assert len(offsets) > 60                          # offsets spread over the 9 x 9 range
    assert 80 < flips < 176                           # about half flipped


def test_cutout_zeroes_one_clipped_square():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(64, 3, 32, 32)
    y = D.cutout_batch(x, 16, g)
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros <= 256).all() and (zeros > 0).all() and (zeros == 256).any()
    assert torch.equal(y[:, 0] == 0, y[:, 2] == 0)     # same square on every channel


def test_batch_loader_is_deterministic_per_epoch_and_shards():
    data = D.synthetic_arrays(100)
    idx = torch.arange(100)
    a = D.BatchLoader(data, idx, 16, 'cpu', shuffle=True, augment=True, seed=7)
    b = D.BatchLoader(data, idx, 16, 'cpu', shuffle=True, augment=True, seed=7)
    first = [(x.clone(), y.clone()) for x, y in a]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, b))
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[1], first[0][1])
    # label = image index, so the labels name the images each rank sees
    numbered = dataclasses.replace(data, labels=torch.arange(100))
    for n, even in ((100, True), (99, True), (99, False)):
        shards = [D.BatchLoader(numbered, idx[:n], 16, 'cpu', shuffle=True, seed=7, rank=r, world_size=2,
                                even_shards=even) for r in range(2)]
        seen = [torch.cat([y for _, y in s]).tolist() for s in shards]
        assert [len(s) for s in seen] == ([50, 50] if even else [50, 49])   # padded by wrapping, or exact
        assert sorted(seen[0] + seen[1]) == sorted(list(range(n)) + (seen[0][:1] if n % 2 and even else []))
        assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])


def test_eval_batches_are_normalized_in_order():
    data = D.synthetic_arrays(10)
    x, y = next(iter(D.BatchLoader(data, torch.arange(10), 10, 'cpu')))
    expected = (data.images.float() / 255 - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, data.labels)


def test_trailing_singleton_training_batch_is_dropped():
    data = D.synthetic_arrays(33)
    assert len(D.BatchLoader(data, torch.arange(33), 16, 'cpu', augment=True)) == 2
    assert len(D.BatchLoader(data, torch.arange(33), 16, 'cpu')) == 3


def test_synthetic_classes_are_learnable():
    train, test = D.synthetic_arrays(512, seed=0), D.synthetic_arrays(256, seed=1)
    # nearest class mean on raw pixels already beats chance by far
    means = torch.stack([train.images[train.labels == k].float().mean(0) for k in range(10)])
    dist = ((test.images.float()[:, None] - means[None]) ** 2).sum(dim=(2, 3, 4))
    assert (dist.argmin(1) == test.labels).float().mean() > 0.5


def test_unknown_dataset_and_missing_cifar():
    with pytest.raises(UserError, match='unknown --dataset'):
        D.load_arrays('mnist')
    with pytest.raises(UserError, match='--download'):
        D.load_arrays('cifar10', '/nonexistent')


def test_random_labels_are_seeded(tmp_path):
    import argparse
    args = argparse.Namespace(dataset='synthetic', data=None, download=False, split_data=1, train_portion=0.5,
                              split_seed=0, split_file=None, train_subset=0, valid_subset=0, random_label=1)
    a, b = D.load_search_data(args), D.load_search_data(args)
    true = D.load_arrays('synthetic').labels
    assert torch.equal(a.train.labels, b.train.labels)
    assert (a.train.labels == true).float().mean() < 0.3


def test_fashion_mnist_is_padded_to_32_with_3_channels(fmnist):
    d = D.load_arrays('fashion-mnist', fmnist, train=False)
    assert d.images.shape == (10000, 1, 32, 32) and d.num_classes == 10
    assert d.images[:, :, :2].sum() == 0 and d.images[:, :, :, -2:].sum() == 0
    assert set(d.labels.unique().tolist()) == set(range(10))
    x, _ = next(iter(D.BatchLoader(d, torch.arange(8), 8, 'cpu')))
    assert x.shape == (8, 3, 32, 32)


def test_partial_or_corrupt_fashion_mnist(fmnist, tmp_path):
    shutil.copy(f'{fmnist}/train-images-idx3-ubyte.gz', tmp_path)
    with pytest.raises(UserError, match='train-labels-idx1-ubyte.gz not found'):
        D.load_arrays('fashion-mnist', tmp_path)
    raw = gzip.open(f'{fmnist}/train-labels-idx1-ubyte.gz').read()
    with gzip.open(tmp_path / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(raw[:1000])                             # truncated
    with pytest.raises(UserError, match='truncated or corrupted'):
        D.load_arrays('fashion-mnist', tmp_path)


def test_batched_augmentation_matches_torchvision_distribution():
    """Same padding (zeros, 4), same crop offsets (uniform 0..8 each way), same flip rate as
    RandomCrop(32, padding=4) + RandomHorizontalFlip applied image by image."""
    import torchvision.transforms as T
    n = 4000
    ramp = (torch.arange(32 * 32).view(1, 32, 32) % 251 + 1).float()      # positive, position-coded
    img = ramp.expand(3, 32, 32).contiguous()
    padded = F.pad(img, (4, 4, 4, 4))
    windows = {(dy, dx, f): (padded[:, dy:dy + 32, dx:dx + 32].flip(2) if f else padded[:, dy:dy + 32, dx:dx + 32])
               for dy in range(9) for dx in range(9) for f in (0, 1)}
    keys = {w[0, :, :].numpy().tobytes(): k for k, w in windows.items()}

    def histogram(batch):
        counts = torch.zeros(9, 9)
        flips = 0
        for x in batch:
            dy, dx, f = keys[x[0].numpy().tobytes()]
            counts[dy, dx] += 1
            flips += f
        return counts / len(batch), flips / len(batch)

    torch.manual_seed(0)
    tv = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    ref_counts, ref_flips = histogram([tv(img) for _ in range(n)])
    ours_counts, ours_flips = histogram(D.augment_batch(img.expand(n, 3, 32, 32), torch.Generator().manual_seed(1)))
    assert (ref_counts > 0).all() and (ours_counts > 0).all()          # the same 81 offsets
    assert (ref_counts - 1 / 81).abs().max() < 0.012 and (ours_counts - 1 / 81).abs().max() < 0.012
    assert abs(ref_flips - 0.5) < 0.03 and abs(ours_flips - 0.5) < 0.03


def test_resident_data_gives_the_same_batches():
    data = D.synthetic_arrays(64)
    moved = data.to('cpu')
    a = D.BatchLoader(data, torch.arange(64), 16, 'cpu', shuffle=True, augment=True, cutout=8, seed=3)
    b = D.BatchLoader(moved, torch.arange(64), 16, 'cpu', shuffle=True, augment=True, cutout=8, seed=3,
                      memory_format=torch.channels_last)
    for (x1, y1), (x2, y2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and x2.is_contiguous(memory_format=torch.channels_last)


# --- the NAS-Bench-201 CIFAR split files ------------------------------------------------------------------

@pytest.mark.parametrize('name', ['cifar-split.txt', 'cifar100-split.txt'])
def test_shipped_split_files_are_disjoint_halves(name):
    tr, va = split_file_halves(name)
    assert len(tr) == len(va) == 25000 and not set(tr) & set(va) and set(tr) | set(va) == set(range(50000))


def _ns(**kw):
    base = dict(dataset='cifar10', split_data=1, split=None, split_file=None, split_seed=None, train_portion=None)
    return argparse.Namespace(**{**base, **kw})


def test_resolve_split_defaults_and_requests():
    assert D.resolve_split(_ns()).path.endswith('splits/cifar-split.txt')
    assert D.resolve_split(_ns(dataset='cifar100')).path.endswith('splits/cifar100-split.txt')
    assert D.resolve_split(_ns(train_portion=0.5)).kind == 'nb201'        # the reference passes 0.5: no change
    assert D.resolve_split(_ns(dataset='synthetic')).kind == 'seeded'
    assert D.resolve_split(_ns(split_seed=3)) == D.Split('seeded', seed=3, portion=0.5)
    assert D.resolve_split(_ns(split='seeded', train_portion=0.8)) == D.Split('seeded', seed=0, portion=0.8)
    assert D.resolve_split(_ns(split_data=0)).kind == 'none'
    with pytest.raises(D.UserError, match='add --split seeded'):
        D.resolve_split(_ns(train_portion=0.8))
    with pytest.raises(D.UserError, match='cifar10 and cifar100 only'):
        D.resolve_split(_ns(dataset='synthetic', split='nb201'))


def test_random_labels_leave_the_valid_half_true():
    args = argparse.Namespace(dataset='synthetic', data=None, download=False, split_data=1, split='seeded',
                              train_portion=0.5, split_seed=0, split_file=None, train_subset=0, valid_subset=0,
                              random_label=1)
    d = D.load_search_data(args)
    true = D.load_arrays('synthetic').labels
    assert torch.equal(d.valid.labels[d.valid_idx], true[d.valid_idx])
    assert (d.train.labels[d.train_idx] == true[d.train_idx]).float().mean() < 0.3
    assert d.valid.images is d.train.images                              # one copy of the images


# --- ImageNet16-120 (NAS-Bench-201's 16x16 downsampled ImageNet, 120 classes) in its pickle format ------

def test_layout_class_filter_and_crop_padding(imagenet16):
    root, entries = imagenet16
    val = D.load_arrays('imagenet16-120', root, train=False)
    e = entries['val_data']
    keep = [i for i, label in enumerate(e['labels']) if label <= 120]
    assert val.images.shape == (len(keep), 3, 16, 16) and val.images.dtype == torch.uint8
    assert val.labels.tolist() == [e['labels'][i] - 1 for i in keep]          # 1-based -> 0..119
    for k, i in enumerate(keep):                                               # channel-major rows
        for c in range(3):
            assert (val.images[k, c] == (7 * i + 60 * c + 99) % 256).all()
    train_set = D.load_arrays('imagenet16-120', root, train=True)
    n_train = sum(sum(label <= 120 for label in entries[f'train_data_batch_{i}']['labels']) for i in range(1, 11))
    assert len(train_set) == n_train and train_set.num_classes == 120 and train_set.crop_pad == 2
    assert 0 <= train_set.labels.min() and train_set.labels.max() < 120

    # Augmented batches are windows of the image zero-padded by 2 (NAS-Bench-201), never by 4.
    ones = D.ArrayData(torch.full((256, 3, 16, 16), 200, dtype=torch.uint8), torch.zeros(256, dtype=torch.long),
                       120, (0.0,) * 3, (1.0,) * 3, crop_pad=2)
    x, _ = next(iter(D.BatchLoader(ones, torch.arange(256), 256, 'cpu', shuffle=True, augment=True)))
    zero_rows = (x[:, 0] == 0).all(dim=2).sum(dim=1)                          # padded rows per image
    zero_cols = (x[:, 0] == 0).all(dim=1).sum(dim=1)
    assert zero_rows.max() == 2 and zero_cols.max() == 2 and (zero_rows == 0).any()


def test_missing_corrupt_or_unsafe_files(imagenet16, tmp_path):
    root, _ = imagenet16
    (root / 'val_data').unlink()
    with pytest.raises(UserError, match='val_data not found'):
        D.load_arrays('imagenet16-120', root, train=False)
    (root / 'val_data').write_bytes(pickle.dumps(imagenet16_entry(1, 8))[:300])          # truncated
    with pytest.raises(UserError, match='truncated or corrupted'):
        D.load_arrays('imagenet16-120', root, train=False)

    marker = tmp_path / 'ran'

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), 'w'))
    (root / 'val_data').write_bytes(pickle.dumps({'data': Evil(), 'labels': [1]}))
    with pytest.raises(UserError, match='not allowed'):
        D.load_arrays('imagenet16-120', root, train=False)
    assert not marker.exists()                                                 # the file ran no code


class _HostTensor:
    """Stands for a CPU tensor: records how it is moved."""

    def __init__(self, log, pinned=False):
        self.log, self.pinned, self.device = log, pinned, torch.device('cpu')

    def pin_memory(self):
        self.log.append('pin')
        return _HostTensor(self.log, pinned=True)

    def to(self, device, non_blocking=False):
        self.log.append(('to', torch.device(device).type, non_blocking, self.pinned))
        return self


def test_copies_to_a_gpu_are_non_blocking_from_pinned_memory():
    log = []
    D.to_device(_HostTensor(log), 'cuda')
    assert log == ['pin', ('to', 'cuda', True, True)]
    log.clear()
    D.to_device(_HostTensor(log), torch.device('cpu'))            # never pinned for a CPU
    assert log == [('to', 'cpu', False, False)]
    t = torch.arange(3)
    assert D.to_device(t, 'cpu') is t


def test_every_copy_of_a_batch_goes_through_to_device(monkeypatch):
    """Indices, images, labels and every augmentation draw (crop offsets, flips, cutout centres) are moved by
    to_device; on a CPU the batches are unchanged."""
    arrays = D.ArrayData(torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 10, 10,
                         mean=(0.5,) * 3, std=(0.25,) * 3, crop_pad=2)
    loader = D.BatchLoader(arrays, torch.arange(20), 8, 'cpu', shuffle=True, augment=True, cutout=4, seed=3)
    expected = list(loader)
    moved = []
    real = D.to_device
    monkeypatch.setattr(D, 'to_device', lambda t, device: (moved.append(tuple(t.shape)), real(t, device))[1])
    got = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got))
    # per batch of 8: indices, images, oy, ox, flip mask, cy, cx, labels
    assert moved[:8] == [(8,), (8, 3, 8, 8), (8,), (8,), (8,), (8,), (8,), (8,)], moved
