"""ImageNet16-120 (NAS-Bench-201's 16x16 downsampled ImageNet, 120 classes) from generated files in its
pickle format: layout, class filter, crop padding, errors, and stages 1 and 3 through their CLIs."""
import pickle

import numpy as np
import pytest
import torch

import data as D
from conftest import cli_exit_code, snapshot_dir
from retrain import retrain
from train_supernet import train
from utils import UserError

PER_FILE = 24


def _entry(seed, n):
    """n images whose pixel value encodes (image, channel), labels 1..1000 with some above 120."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 1001, n)
    labels[: n // 2] = rng.integers(1, 121, n // 2)                     # at least half kept
    pix = np.zeros((n, 3, 16, 16), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            pix[i, c] = (7 * i + 60 * c + seed) % 256
    return {'data': pix.reshape(n, -1), 'labels': labels.tolist(), 'mean': np.zeros(768)}


@pytest.fixture
def imagenet16(tmp_path):
    root = tmp_path / 'ImageNet16'
    root.mkdir()
    entries = {}
    for name, seed in [(f'train_data_batch_{i}', i) for i in range(1, 11)] + [('val_data', 99)]:
        entries[name] = _entry(seed, PER_FILE)
        with open(root / name, 'wb') as f:
            pickle.dump(entries[name], f)
    return root, entries


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
    (root / 'val_data').write_bytes(pickle.dumps(_entry(1, 8))[:300])          # truncated
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


def test_stages_1_and_3_run_on_16x16_images(imagenet16, tmp_path, capsys):
    root, _ = imagenet16
    common = ['--dataset', 'imagenet16-120', '--data', root, '--init_channels', 4, '--layers', 3, '--batch_size', 16,
              '--seed', 0, '--epochs', 1]
    assert cli_exit_code(train, common + ['--valid_bn_images', 16, '--save', tmp_path / 's1']) == 0
    ckpt = torch.load(tmp_path / 's1' / 'checkpoint_epoch_1.pth.tar')
    assert ckpt['num_classes'] == 120 and ckpt['state_dict']['classifier.weight'].shape[0] == 120

    assert cli_exit_code(retrain, common + ['--arch', 'DARTS_V2', '--save', tmp_path / 's3']) == 0
    best = torch.load(tmp_path / 's3' / 'model_best.pth.tar')
    assert best['state_dict']['classifier.weight'].shape[0] == 120
    assert not any(k.startswith('auxiliary_head') for k in best['state_dict'])     # off by default for 16x16
    assert 'multiply-adds' in (tmp_path / 's3' / 'log.txt').read_text()
    assert 'one 16x16 image' in (tmp_path / 's3' / 'log.txt').read_text()

    before = snapshot_dir(tmp_path)
    capsys.readouterr()
    assert cli_exit_code(retrain, common + ['--arch', 'DARTS_V2', '--auxiliary', '--save', tmp_path / 's4']) == 2
    assert '--auxiliary needs 32x32 images' in capsys.readouterr().err
    assert snapshot_dir(tmp_path) == before
