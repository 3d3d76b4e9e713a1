"""Fidelity to the reference (issue 11): the NAS-Bench-201 CIFAR split in stages 1 and 2, the reference's
ImageNet preprocessing, -r/--refresh, reference retrain checkpoints, --random_label, the no-op flags and
per-candidate BN images."""
import argparse
import json
import pickle
import random

import numpy as np
import pytest
import torch

import data as D
import imagenet_reference as R
from conftest import cli_exit_code
from evolutionary_search import metrics as M
from evolutionary_search import search
from retrain import retrain, retraining
from train_supernet import train
from utils import read_metrics


def _halves(name):
    doc = json.loads((D.SPLITS_DIR / name).read_text())
    return [int(i) for i in doc['train'][1]], [int(i) for i in doc['valid'][1]]


# --- the CIFAR split ------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['cifar-split.txt', 'cifar100-split.txt'])
def test_shipped_split_files_are_disjoint_halves(name):
    tr, va = _halves(name)
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


@pytest.fixture(scope='module')
def fake_cifar10(tmp_path_factory):
    """CIFAR-10 in torchvision's python format: 50,000 training images (label = index % 10), 1,000 test ones."""
    root = tmp_path_factory.mktemp('cifar')
    folder = root / 'cifar-10-batches-py'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for b in range(5):
        idx = np.arange(b * 10000, (b + 1) * 10000)
        entry = {'data': rng.integers(0, 256, (10000, 3072), dtype=np.uint8), 'labels': list(idx % 10)}
        (folder / f'data_batch_{b + 1}').write_bytes(pickle.dumps(entry))
    (folder / 'test_batch').write_bytes(pickle.dumps({'data': rng.integers(0, 256, (1000, 3072), dtype=np.uint8),
                                                      'labels': [i % 10 for i in range(1000)]}))
    (folder / 'batches.meta').write_bytes(pickle.dumps({'label_names': [f'c{i}' for i in range(10)]}))
    return root


@pytest.fixture
def recorded_batches(monkeypatch):
    """Every batch any BatchLoader builds: [(augmented?, [dataset indices])]. torchvision's MD5 check of the
    CIFAR files is switched off for the generated ones."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda *a, **k: True)
    seen, original = [], D.BatchLoader.batch

    def batch(self, idx, generator=None):
        seen.append((self.augment, idx.tolist()))
        return original(self, idx, generator)
    monkeypatch.setattr(D.BatchLoader, 'batch', batch)
    return seen


def _tiny_supernet(root, run, extra=()):
    argv = ['--dataset', 'cifar10', '--data', root, '--init_channels', 4, '--layers', 3, '--batch_size', 32,
            '--epochs', 1, '--train_subset', 64, '--valid_subset', 32, '--valid_bn_images', 32, '--seed', 1,
            '--save', run, *extra]
    return train.main(train.parse_args([str(a) for a in argv]))


@pytest.mark.slow
def test_stages_1_and_2_train_and_score_on_the_file_halves(fake_cifar10, recorded_batches, tmp_path, capsys):
    tr, va = _halves('cifar-split.txt')
    run = tmp_path / 'supernet'
    _tiny_supernet(fake_cifar10, run)
    split = json.loads((run / 'split.json').read_text())
    assert [int(i) for i in split['train'][1]] == tr[:64] and [int(i) for i in split['valid'][1]] == va[:32]
    trained = [i for aug, idx in recorded_batches if aug for i in idx]
    validated = [i for aug, idx in recorded_batches if not aug for i in idx]
    assert set(trained) == set(tr[:64]) and set(validated) == set(va[:32])      # --train/valid_subset: file order
    ckpt = torch.load(run / 'checkpoint_epoch_1.pth.tar')
    assert ckpt['split_digest'] == D.split_digest(torch.tensor(tr)) and 'cifar-split.txt' in ckpt['split']

    recorded_batches.clear()
    argv = ['--model_path', run / 'checkpoint_epoch_1.pth.tar', '--data', fake_cifar10, '--arch', 'DARTS_V2',
            '--metric', 'acc', '--max_train_img_size', 64, '--max_val_img_size', 40, '--test_batch_size', 20,
            '--save', tmp_path / 'search']
    assert cli_exit_code(search, argv) == 0, capsys.readouterr().err
    bn = [i for aug, idx in recorded_batches if aug for i in idx]
    scored = [i for aug, idx in recorded_batches if not aug for i in idx]
    assert len(bn) == 64 and set(bn) <= set(tr)                                 # BN recalibration: train half
    assert scored == va[:40] and not set(scored) & set(tr)                       # acc: valid half, never train
    assert 'scoring on the NAS-Bench-201 split file cifar-split.txt' in (tmp_path / 'search' / 'log.txt').read_text()


@pytest.mark.slow
def test_reference_checkpoint_scores_on_the_file_and_a_split_mismatch_is_refused(fake_cifar10, recorded_batches,
                                                                                  tmp_path, capsys):
    run = tmp_path / 'supernet'
    _tiny_supernet(fake_cifar10, run)
    ours = torch.load(run / 'checkpoint_epoch_1.pth.tar')
    torch.save({'epoch': 0, 'state_dict': {f'module.{k}': v for k, v in ours['state_dict'].items()},
                'optimizer': ours['optimizer']}, tmp_path / 'ref.pth.tar')
    base = ['--data', fake_cifar10, '--arch', 'DARTS_V2', '--metric', 'acc', '--max_train_img_size', 32,
            '--max_val_img_size', 32]
    ref = ['--model_path', tmp_path / 'ref.pth.tar', '--dataset', 'cifar10', '--init_channels', 4, '--layers', 3]
    assert cli_exit_code(search, ref + base + ['--save', tmp_path / 'a']) == 0
    log = (tmp_path / 'a' / 'log.txt').read_text()
    assert 'reference checkpoint (no args): scoring on the NAS-Bench-201 split file cifar-split.txt' in log
    capsys.readouterr()
    for model in (ref, ['--model_path', run / 'checkpoint_epoch_1.pth.tar']):   # reference and our own supernet
        assert cli_exit_code(search, model + base + ['--split', 'seeded', '--save', tmp_path / 'b']) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and 'cifar-split.txt' in err and '--force_split' in err, err
        assert not (tmp_path / 'b').exists()
    assert cli_exit_code(search, ref + base + ['--split', 'seeded', '--force_split', '--save', tmp_path / 'c']) == 0
    assert 'warning:' in (tmp_path / 'c' / 'log.txt').read_text()


def test_random_labels_leave_the_valid_half_true():
    args = argparse.Namespace(dataset='synthetic', data=None, download=False, split_data=1, split='seeded',
                              train_portion=0.5, split_seed=0, split_file=None, train_subset=0, valid_subset=0,
                              random_label=1)
    d = D.load_search_data(args)
    true = D.load_arrays('synthetic').labels
    assert torch.equal(d.valid.labels[d.valid_idx], true[d.valid_idx])
    assert (d.train.labels[d.train_idx] == true[d.train_idx]).float().mean() < 0.3
    assert d.valid.images is d.train.images                              # one copy of the images


# --- stage-2 flags --------------------------------------------------------------------------------------

TINY_SUPERNET = ['--dataset', 'synthetic', '--init_channels', 4, '--layers', 3, '--batch_size', 32,
                 '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 32, '--seed', 1, '--epochs', 1]
TINY_SEARCH = ['--max_epochs', 2, '--population_num', 4, '--select_num', 2, '--mutation_num', 1,
               '--crossover_num', 1, '--max_train_img_size', 32, '--max_val_img_size', 32, '--batch_size', 32,
               '--test_batch_size', 32, '--metric', 'acc', '--seed', 7]


@pytest.fixture(scope='module')
def supernet(tmp_path_factory):
    run = tmp_path_factory.mktemp('fidelity') / 'supernet'
    train.main(train.parse_args([str(a) for a in TINY_SUPERNET + ['--save', run]]))
    return ['--model_path', run / 'checkpoint_epoch_1.pth.tar']


def _scored(run):
    return len(json.loads((run / 'search_checkpoint.json').read_text())['evolution']['scores'])


def test_refresh_resumes_and_only_restart_starts_over(supernet, tmp_path, capsys):
    run = tmp_path / 'search'
    assert cli_exit_code(search, supernet + TINY_SEARCH + ['--save', run, '--stop_after', 3]) == 0
    assert cli_exit_code(search, supernet + TINY_SEARCH + ['--save', run, '-r', '--stop_after', 2]) == 0
    assert _scored(run) == 5                                                  # 3 kept + 2 new: resumed
    assert '-r/--refresh: resuming is the default here' in (run / 'log.txt').read_text()
    assert cli_exit_code(search, supernet + TINY_SEARCH + ['--save', run, '--restart', '--stop_after', 1]) == 0
    assert _scored(run) == 1
    # outputs without a checkpoint are not overwritten either
    (run / 'search_checkpoint.json').unlink()
    (run / 'genotype.json').write_text('{}')
    capsys.readouterr()
    assert cli_exit_code(search, supernet + TINY_SEARCH + ['--save', run]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and '--restart' in err and (run / 'genotype.json').read_text() == '{}'


def test_reference_noop_flags_warn_once_and_unknown_flags_fail(capsys, tmp_path):
    args = train.parse_args(['--gpu', '0', '--cutout', '--cutout_length', '16', '--drop_path_prob', '0.3',
                             '--model_path', 'saved_models', '--unrolled', '--arch_learning_rate', '3e-4',
                             '--arch_weight_decay', '1e-3', '--save', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: --gpu --cutout --cutout_length') and 'nothing' in err[0]
    assert not any(k.startswith('noop_') for k in vars(args)) and not hasattr(args, 'gpu')
    args = search.parse_args(['--model_path', 'x.pth.tar', '--cutout', '--cutout_length', '16'])
    assert capsys.readouterr().err.count('warning:') == 1 and not hasattr(args, 'cutout')
    for module, argv in ((train, ['--unknown_flag', '1']), (search, ['--model_path', 'x', '--gpu', '0'])):
        assert cli_exit_code(module, argv) == 2 and 'unrecognized arguments' in capsys.readouterr().err


def test_bn_images_per_candidate_are_a_function_of_the_candidate():
    data = D.SearchData(D.synthetic_arrays(256), torch.arange(128), D.synthetic_arrays(256), torch.arange(128, 256),
                        10)
    a, b = [0] * 28, [1] * 28

    def first(ctx, cand):
        return next(iter(M.bn_batches(ctx, 32, cand)))[0]
    shared = M.ScoringContext(model=None, init_model=None, data=data, device=torch.device('cpu'), seed=3,
                              batch_size=32)
    per = M.ScoringContext(**{**shared.__dict__, 'bn_per_candidate': True})
    assert torch.equal(first(shared, a), first(shared, b))
    assert torch.equal(first(per, a), first(per, a)) and not torch.equal(first(per, a), first(per, b))


# --- stage 3 --------------------------------------------------------------------------------------------

RETRAIN = ['--dataset', 'synthetic', '--arch', 'DARTS_V2', '--init_channels', 8, '--layers', 3, '--batch_size', 32,
           '--learning_rate', 0.05, '--train_subset', 64, '--test_subset', 32, '--seed', 1]


def test_reference_retrain_checkpoint_resumes_at_the_next_epoch(tmp_path):
    ours = tmp_path / 'ours'
    retrain.main(retrain.parse_args([str(a) for a in RETRAIN + ['--epochs', 1, '--save', ours]]))
    ck = torch.load(ours / 'checkpoint.pth.tar')
    assert ck['epoch'] == 1                                        # ours: epochs finished
    ref = {'epoch': 0, 'state_dict': {f'module.{k}': v for k, v in ck['state_dict'].items()},
           'best_acc_top1': ck['best_acc_top1'], 'optimizer': ck['optimizer']}   # reference: 0-based last epoch
    torch.save(ref, tmp_path / 'ref.pth.tar')
    for name, path in (('from_ref', tmp_path / 'ref.pth.tar'), ('from_ours', ours / 'checkpoint.pth.tar')):
        retrain.main(retrain.parse_args([str(a) for a in RETRAIN + ['--epochs', 3, '--resume', path,
                                                                       '--save', tmp_path / name]]))
        recs = read_metrics(tmp_path / name / 'metrics.jsonl')
        factor = retraining.lr_factor(retrain.parse_args([str(a) for a in RETRAIN + ['--epochs', 3]]))
        assert [r['epoch'] for r in recs] == [2, 3], name
        assert recs[0]['lr'] == pytest.approx(0.05 * factor(1)) and recs[1]['lr'] == pytest.approx(0.05 * factor(2))


@pytest.mark.parametrize('src, dst', [((37, 53), (224, 224)), ((300, 411), (224, 224)), ((448, 448), (224, 224)),
                                      ((500, 375), (341, 256)), ((17, 230), (256, 3463))])
def test_resize_matches_opencv_inter_linear(src, dst):
    cv2 = pytest.importorskip('cv2')
    img = np.random.default_rng(sum(src)).integers(0, 256, (*src, 3), dtype=np.uint8)
    ours = R.resize_bilinear(torch.from_numpy(img).permute(2, 0, 1), *dst).permute(1, 2, 0).numpy()
    theirs = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_eval_pipeline_sees_the_pixels_of_the_reference():
    """Shorter side 256 with int(256 * long / short + 0.5), OpenCV's interpolation, centre crop 224."""
    cv2 = pytest.importorskip('cv2')
    from PIL import Image
    for h, w in ((375, 500), (640, 427), (300, 300)):
        img = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = D.imagenet_transforms(False, normalize=False)(Image.fromarray(img))
        nh, nw = (256, int(256 / h * w + 0.5)) if h < w else (int(256 / w * h + 0.5), 256)
        big = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = int(round((nh - 224) / 2)), int(round((nw - 224) / 2))
        theirs = torch.from_numpy(big[top:top + 224, left:left + 224]).permute(2, 0, 1).float() / 255
        assert ours.shape == (3, 224, 224) and (ours - theirs).abs().max() <= 1 / 255 + 1e-6


def test_square_crop_geometry_distribution():
    rng = random.Random(0)
    boxes = [R.square_crop_box(100, 100, rng=rng) for _ in range(4000)]
    assert all(0 <= b.top <= 100 - b.edge and 0 <= b.left <= 100 - b.edge for b in boxes)       # always fits
    frac = np.array([b.edge ** 2 / 1e4 for b in boxes])
    assert frac.min() >= 0.0784 and frac.max() <= 1.0                      # round(sqrt(0.08 * 1e4)) = 28 -> 0.0784
    assert abs(frac.mean() - 0.54) < 0.02 and abs((frac < 0.5).mean() - 0.42 / 0.92) < 0.03   # uniform area
    # a 40x160 image: a square fits only when the area fraction is <= 0.25; otherwise after 10 tries the
    # last square is taken, partly outside the image, and zero-filled there
    boxes = [R.square_crop_box(40, 160, rng=rng) for _ in range(4000)]
    outside = [b for b in boxes if b.edge > 40]
    assert abs(len(outside) / 4000 - (1 - 0.17 / 0.92) ** 10) < 0.02
    img = torch.full((3, 40, 160), 7, dtype=torch.uint8)
    crop = R.crop_zero_filled(img, outside[0])
    rows = (crop[0] == 7).any(1)
    assert crop.shape == (3, outside[0].edge, outside[0].edge) and int(rows.sum()) == 40 and (crop[:, ~rows] == 0).all()
    out = R.SquareCropResize(224, rng=random.Random(1))(torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8))
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_lighting_clips_and_truncates_to_uint8():
    img = torch.tensor([0, 100, 200, 255], dtype=torch.uint8).view(1, 1, 4).expand(3, 1, 4).contiguous()
    strong = R.QuantizedLighting(D.IMAGENET_PCA_EIGVAL, D.IMAGENET_PCA_EIGVEC, alphastd=50.0,
                                 generator=torch.Generator().manual_seed(0))
    out = strong(img)
    assert out.dtype == torch.uint8 and ((out == 0) | (out == 255)).any()         # clipped, not wrapped
    mild = R.QuantizedLighting(D.IMAGENET_PCA_EIGVAL, D.IMAGENET_PCA_EIGVEC, generator=torch.Generator().manual_seed(1))
    alpha = torch.randn(3, generator=torch.Generator().manual_seed(1)) * 0.1
    rgb = (torch.tensor(D.IMAGENET_PCA_EIGVEC) @ (torch.tensor(D.IMAGENET_PCA_EIGVAL) * alpha)).numpy()
    expected = np.floor(np.clip((img.numpy() / 255.0 + rgb[:, None, None]) * 255, 0, 255))
    assert np.abs(mild(img).numpy().astype(int) - expected).max() <= 1
