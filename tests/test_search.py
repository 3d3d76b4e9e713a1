"""Stage 2 through its CLI: exact resume, scoring given cells, genotype.json, bad input, real data."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import data as D
import genotypes as G
import utils
from conftest import (ROOT, TINY_SUPERNETS, assert_refused, check_refusal, cli_exit_code, error_lines, kill_moments,
                      refusal_base, run_and_kill, run_script, slow_params, snapshot_dir, split_file_halves,
                      stage_cli, torchrun)
from evolutionary_search import search
from spaces import nb201
from train_supernet import train
from utils import read_metrics

TINY_SEARCH = ['--max_epochs', 3, '--population_num', 6, '--select_num', 3, '--mutation_num', 2,
               '--crossover_num', 2, '--max_train_img_size', 32, '--max_val_img_size', 64, '--batch_size', 32,
               '--test_batch_size', 64, '--metric', 'angle+wlm', '--wlm_weight', 0.5, '--seed', 7]
# A search of one generation of 3 (bad input, one writer per run directory, a full disk).
SHORT_SEARCH = ['--max_epochs', 1, '--population_num', 3, '--select_num', 2, '--mutation_num', 1, '--crossover_num',
                1, '--max_train_img_size', 32, '--max_val_img_size', 32, '--batch_size', 32, '--test_batch_size', 32,
                '--metric', 'acc', '--seed', 7]
# Two generations of 4 scored by accuracy (-r/--refresh).
REFRESH_SEARCH = ['--max_epochs', 2, '--population_num', 4, '--select_num', 2, '--mutation_num', 1,
                  '--crossover_num', 1, '--max_train_img_size', 32, '--max_val_img_size', 32, '--batch_size', 32,
                  '--test_batch_size', 32, '--metric', 'acc', '--seed', 7]
# TINY_SEARCH with each test's own --metric (NAS-Bench-201 supernets).
NB201_SEARCH = ['--max_epochs', 3, '--population_num', 6, '--select_num', 3, '--mutation_num', 2,
                '--crossover_num', 2, '--max_train_img_size', 32, '--max_val_img_size', 64, '--batch_size', 32,
                '--test_batch_size', 64, '--seed', 7]
# Run under torchrun and in one process; the default --test_batch_size.
DDP_SEARCH = ['--max_epochs', 3, '--population_num', 6, '--select_num', 3, '--mutation_num', 2, '--crossover_num', 2,
              '--max_train_img_size', 32, '--max_val_img_size', 64, '--batch_size', 32, '--metric', 'angle+wlm',
              '--wlm_weight', 0.5, '--seed', 7, '--device', 'cpu']


@pytest.fixture(scope='module')
def supernet(tiny_supernet):
    return tiny_supernet('darts')


def ckpts(run):
    return ['--init_model_path', run / 'checkpoint_epoch_0.pth.tar', '--model_path', run / 'checkpoint_epoch_1.pth.tar']


def _cli(argv, capsys):
    """Run the stage-2 CLI in-process; returns (exit status, captured stdout/stderr)."""
    return cli_exit_code(search, argv), capsys.readouterr()


@pytest.fixture(scope='module')
def straight(supernet, tmp_path_factory):
    run = tmp_path_factory.mktemp('straight') / 'search'
    run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', run)
    return run


@pytest.fixture(scope='module')
def bad_input_runs(tmp_path_factory, tiny_supernet):
    """A copy of the finished tiny supernet, a comments-only file and a file where a directory is expected
    (conftest.refusal_base)."""
    return refusal_base(tmp_path_factory.mktemp('refusals'), supernet=tiny_supernet('darts'))


@pytest.fixture(scope='module')
def nb201_supernet(tiny_supernet):
    return tiny_supernet('nb201')


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


def supernet_ckpts(base):
    return ['--init_model_path', base / 'supernet' / 'checkpoint_epoch_0.pth.tar',
            '--model_path', base / 'supernet' / 'checkpoint_epoch_1.pth.tar']


def _tiny_supernet(root, run, extra=()):
    """A tiny stage-1 run on fake CIFAR-10 with the NAS-Bench-201 split file (the reference's split)."""
    argv = ['--dataset', 'cifar10', '--data', root, '--init_channels', 4, '--layers', 3, '--batch_size', 32,
            '--epochs', 1, '--train_subset', 64, '--valid_subset', 32, '--valid_bn_images', 32, '--seed', 1,
            '--save', run, *extra]
    return train.main(train.parse_args([str(a) for a in argv]))


def _scored(run):
    return len(json.loads((run / 'search_checkpoint.json').read_text())['evolution']['scores'])


def top10(run):
    doc = json.loads((run / 'genotype.json').read_text())
    return [t['candidate'] for t in doc['top10']], [t['score'] for t in doc['top10']]


def all_scores(run):
    """{candidate: score} of every candidate a search scored (its checkpoint)."""
    doc = json.loads((run / 'search_checkpoint.json').read_text())
    return {k: v['score'] for k, v in doc['evolution']['scores'].items()}


# --- the NAS-Bench-201 CIFAR split, reference checkpoints, -r/--refresh ---------------------------------

@pytest.mark.slow
def test_stages_1_and_2_train_and_score_on_the_file_halves(fake_cifar10, recorded_batches, tmp_path, capsys):
    tr, va = split_file_halves('cifar-split.txt')
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


def test_refresh_resumes_and_only_restart_starts_over(supernet, tmp_path, capsys):
    model = ['--model_path', supernet / 'checkpoint_epoch_1.pth.tar']
    run = tmp_path / 'search'
    assert cli_exit_code(search, model + REFRESH_SEARCH + ['--save', run, '--stop_after', 3]) == 0
    assert cli_exit_code(search, model + REFRESH_SEARCH + ['--save', run, '-r', '--stop_after', 2]) == 0
    assert _scored(run) == 5                                                  # 3 kept + 2 new: resumed
    assert '-r/--refresh: resuming is the default here' in (run / 'log.txt').read_text()
    assert cli_exit_code(search, model + REFRESH_SEARCH + ['--save', run, '--restart', '--stop_after', 1]) == 0
    assert _scored(run) == 1
    # outputs without a checkpoint are not overwritten either
    (run / 'search_checkpoint.json').unlink()
    (run / 'genotype.json').write_text('{}')
    capsys.readouterr()
    assert cli_exit_code(search, model + REFRESH_SEARCH + ['--save', run]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and '--restart' in err and (run / 'genotype.json').read_text() == '{}'



def test_resume_on_another_device_type_is_refused_and_older_checkpoints_resume(supernet, tmp_path, capsys):
    """Scores depend on the device type: the checkpoint records it, a search begun on a GPU ("cuda", faked
    here) is not continued on a CPU; a checkpoint from before the device was recorded still resumes."""
    model = ['--model_path', supernet / 'checkpoint_epoch_1.pth.tar', '--device', 'cpu']
    run = tmp_path / 'search'
    assert cli_exit_code(search, model + REFRESH_SEARCH + ['--save', run, '--stop_after', 2]) == 0
    path = run / 'search_checkpoint.json'
    doc = json.loads(path.read_text())
    assert doc['device'] == 'cpu'
    path.write_text(json.dumps({**doc, 'device': 'cuda'}))
    before = snapshot_dir(run)
    capsys.readouterr()
    assert cli_exit_code(search, model + REFRESH_SEARCH + ['--save', run, '--stop_after', 1]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'scored on cuda' in err and '--device cuda' in err, err
    assert snapshot_dir(run) == before
    del doc['device']                                        # written before the device was recorded
    path.write_text(json.dumps(doc))
    assert cli_exit_code(search, model + REFRESH_SEARCH + ['--save', run, '--stop_after', 1]) == 0
    assert _scored(run) == 3 and json.loads(path.read_text())['device'] == 'cpu'

# --- NAS-Bench-201 supernets ----------------------------------------------------------------------------

@pytest.mark.parametrize('metric', ['angle+wlm', 'acc'])
def test_search_end_to_end(nb201_supernet, tmp_path, metric):
    out = tmp_path / 'search'
    res = search.main(search.parse_args([str(a) for a in ckpts(nb201_supernet) + NB201_SEARCH +
                                         ['--metric', metric, '--wlm_weight', 0.5, '--save', out]]))
    doc = json.loads((out / 'genotype.json').read_text())
    assert doc['space'] == 'nb201' and doc['arch'] == nb201.to_arch_string(doc['candidate']) == res['genotype']
    assert len(doc['top10']) == 10 and all(t['arch'] == nb201.to_arch_string(t['candidate']) for t in doc['top10'])
    scores = [t['score'] for t in doc['top10']]
    assert scores == sorted(scores, reverse=True) and doc['score'] == scores[0]
    state = json.loads((out / 'search_checkpoint.json').read_text())['evolution']
    assert len(state['scores']) == 18 and all(len(k.split(',')) == 6 for k in state['scores'])
    assert json.loads((out / 'args.json').read_text())['space'] == 'nb201'


def test_scoring_given_cells(nb201_supernet, tmp_path, capsys):
    cells = tmp_path / 'cells.txt'
    cells.write_text('# two cells\n3,3,4,0,3,4\n|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|'
                     'nor_conv_1x1~1|none~2|\n')
    results = search.main(search.parse_args([str(a) for a in ckpts(nb201_supernet) + NB201_SEARCH + [
        '--metric', 'angle+acc', '--acc_weight', 1, '--candidates', cells,
        '--arch', '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|',
        '--save', tmp_path / 'score']]))
    assert [r['candidate'] for r in results] == [[3, 3, 4, 0, 3, 4], [1, 1, 1, 0, 2, 0], [3, 3, 4, 0, 3, 4]]
    assert results[0]['score'] == results[2]['score']          # the same cell, the same score
    for r in results:
        assert r['score'] == pytest.approx(r['angle_normalized'] + r['acc'])


def test_space_mismatches_are_one_clear_error(nb201_supernet, tmp_path, capsys):
    supernet = Path(shutil.copytree(nb201_supernet, tmp_path / 'supernet'))     # the resume below must not touch it
    before = snapshot_dir(supernet)
    code = cli_exit_code(search, ckpts(supernet) + ['--space', 'darts', '--save', tmp_path / 's'])
    err = capsys.readouterr().err
    assert code == 2 and 'holds a nb201 supernet, not darts' in err and len(err.strip().splitlines()) == 1
    code = cli_exit_code(search, ckpts(supernet) + ['--arch', 'DARTS_V2', '--save', tmp_path / 's2'])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --arch DARTS_V2 is not an NB201 cell")
    darts_flags = TINY_SUPERNETS['nb201'][2:] + ['--layers', 3, '--epochs', 2]
    code = cli_exit_code(train, darts_flags + ['--resume', supernet / 'last.pth.tar'])
    err = capsys.readouterr().err
    assert code == 2 and 'is a nb201 supernet; resume it with --space nb201' in err
    assert snapshot_dir(supernet) == before


@pytest.mark.slow
def test_fashion_mnist_nb201_supernet_learns_and_the_search_runs(readme_runs):
    """The README's offline NB201 commands (C=8, N=1, 2 epochs of 20,000 images, then a small search);
    a slow test: it shares the README fixture with the other offline commands."""
    from utils import read_metrics
    sandbox, _ = readme_runs
    recs = read_metrics(sandbox / 'runs' / 'nb201-fmnist' / 'metrics.jsonl')
    assert [r['epoch'] for r in recs] == [1, 2]
    assert recs[-1]['valid_acc'] > 0.5, recs                # random paths, 10 classes
    doc = json.loads((sandbox / 'runs' / 'nb201-search-fmnist' / 'genotype.json').read_text())
    assert doc['space'] == 'nb201' and doc['arch'] == nb201.to_arch_string(doc['candidate'])
    assert {'angle', 'wlm'} <= set(doc['components'])


# --- candidates split over ranks (torchrun) -----------------------------------------------------------

@pytest.mark.slow
def test_distributed_search_equals_one_process_and_resumes_with_another_world_size(ddp_supernet, tmp_path):
    single, double, resumed = tmp_path / 'single', tmp_path / 'double', tmp_path / 'resumed'
    run_script('evolutionary_search/search.py', *ckpts(ddp_supernet), *DDP_SEARCH, '--save', single)
    torchrun('evolutionary_search/search.py', *ckpts(ddp_supernet), *DDP_SEARCH, '--save', double)
    cands1, scores1 = top10(single)
    cands2, scores2 = top10(double)
    assert cands1 == cands2
    assert scores2 == pytest.approx(scores1, rel=1e-6)
    every1, every2 = all_scores(single), all_scores(double)        # every candidate, not only the top 10
    assert len(every1) == 18 and every2.keys() == every1.keys()
    assert [every2[k] for k in every1] == pytest.approx([every1[k] for k in every1], rel=1e-6)
    assert len(read_metrics(double / 'metrics.jsonl')) == 3          # rank 0 alone logs the generations

    torchrun('evolutionary_search/search.py', *ckpts(ddp_supernet), *DDP_SEARCH, '--save', resumed, '--stop_after', 9)
    state = json.loads((resumed / 'search_checkpoint.json').read_text())['evolution']
    assert len(state['scores']) == 9 and state['generation'] == 1 and not (resumed / 'genotype.json').exists()
    run_script('evolutionary_search/search.py', *ckpts(ddp_supernet), *DDP_SEARCH, '--resume', resumed)
    cands3, scores3 = top10(resumed)
    assert cands3 == cands1 and scores3 == pytest.approx(scores1, rel=1e-6)


@pytest.mark.slow
def test_distributed_scoring_of_given_cells(ddp_supernet, tmp_path):
    proc = torchrun('evolutionary_search/search.py', *ckpts(ddp_supernet), *DDP_SEARCH, '--arch', 'DARTS_V2',
                    '--arch', 'GENAS_FLATNESS_CIFAR10', '--arch', 'PDARTS', '--save', tmp_path / 'given')
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{')]
    assert [ln['name'] for ln in lines] == ['DARTS_V2', 'GENAS_FLATNESS_CIFAR10', 'PDARTS']   # printed once, in order
    single = run_script('evolutionary_search/search.py', *ckpts(ddp_supernet), *DDP_SEARCH, '--arch', 'PDARTS',
                        '--save', tmp_path / 'one')
    assert json.loads(single.stdout.splitlines()[-1])['score'] == pytest.approx(lines[2]['score'], rel=1e-6)


# --- bad input, one writer per run directory, a full disk ----------------------------------------------

# (id, argv given the fixture's base folder, text the one error line must hold)
REFUSALS = [
    ('binary --arch stage 2', lambda b: supernet_ckpts(b) + SHORT_SEARCH + [
        '--arch', b / 'supernet' / 'last.pth.tar', '--save', b / 'out'], 'looks like a PyTorch checkpoint'),
    ('binary --candidates', lambda b: supernet_ckpts(b) + SHORT_SEARCH + [
        '--candidates', b / 'supernet' / 'checkpoint_epoch_0.pth.tar', '--save', b / 'out'],
     'looks like a PyTorch checkpoint (zip archive), not a text file of candidates'),
    ('--save is a file, stage 2', lambda b: supernet_ckpts(b) + SHORT_SEARCH + ['--save', b / 'afile'],
     'is an existing file, not a directory'),
    ('comments-only --candidates', lambda b: supernet_ckpts(b) + SHORT_SEARCH + [
        '--candidates', b / 'comments.txt', '--save', b / 'out'], 'holds no candidate (only comments'),
    ('--select_num > --population_num', lambda b: supernet_ckpts(b) + SHORT_SEARCH + [
        '--select_num', 5, '--save', b / 'out'], '--select_num 5 exceeds --population_num 3'),
    ('--model_path a directory', lambda b: SHORT_SEARCH + ['--model_path', b / 'supernet', '--save', b / 'out'],
     'is a directory, not a checkpoint file; pass the file inside it, e.g. {b}/supernet/checkpoint_epoch_1.pth.tar'),
    ('--init_model_path a directory', lambda b: SHORT_SEARCH + [
        '--metric', 'angle', '--model_path', b / 'supernet' / 'checkpoint_epoch_1.pth.tar',
        '--init_model_path', b / 'supernet', '--save', b / 'out'], 'supernet/checkpoint_epoch_0.pth.tar'),
]


@pytest.mark.parametrize('argv, message', [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refused_with_one_line_and_nothing_changed(bad_input_runs, argv, message, capsys):
    check_refusal(search, bad_input_runs, argv(bad_input_runs), message, capsys)


def test_second_process_on_a_run_directory_exits_2_naming_the_first(bad_input_runs, tmp_path):
    """Two searches with different seeds in one --save: the second ends at once, the first's outputs are its own."""
    run = tmp_path / 'run'
    env = dict(os.environ, PYTHONHASHSEED='0', OMP_NUM_THREADS='1')
    cmd = [sys.executable, str(ROOT / 'evolutionary_search' / 'search.py'),
           *map(str, supernet_ckpts(bad_input_runs) + SHORT_SEARCH)]
    first = subprocess.Popen(cmd + ['--save', str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not ((run / '.lock').exists() and (run / '.lock').read_text().strip()) and time.time() < deadline:
        assert first.poll() is None, first.communicate()[1]
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)               # holds the lock while the second one starts (no race)
    try:
        second = subprocess.run(cmd[:-2] + ['--seed', '8', '--save', str(run)], env=env, capture_output=True,
                                text=True)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and error_lines(second.stderr) == [
        f'error: {run} is in use by another process (PID {first.pid}, which holds {run / ".lock"}); wait for it to '
        'finish (or stop it), or choose another --save directory'], second.stderr
    assert json.loads((run / 'args.json').read_text())['seed'] == 7
    assert json.loads((run / 'genotype.json').read_text())['args']['seed'] == 7
    assert [r['generation'] for r in utils.read_metrics(run / 'metrics.jsonl')] == [1]
    assert (run / '.lock').read_text() == ''          # released: the next process may take it


def test_search_on_a_full_disk(bad_input_runs, tmpfs, capsys):
    """A search whose disk fills up: one line, no temporary file, the search checkpoint (if any) readable."""
    fs = tmpfs('40k')
    argv = supernet_ckpts(bad_input_runs) + SHORT_SEARCH + ['--max_epochs', 3, '--save', fs / 'run']
    code, err = stage_cli(search, argv, capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'the disk is full' in lines[0] and 'Traceback' not in err, err
    assert not list((fs / 'run').glob('*.tmp'))
    if (fs / 'run' / 'search_checkpoint.json').exists():
        json.loads((fs / 'run' / 'search_checkpoint.json').read_text())


def scored(run):
    """Candidates in the search checkpoint (-1 before the run wrote its args.json, 0 before the checkpoint)."""
    try:
        return len(json.loads((run / 'search_checkpoint.json').read_text())['evolution']['scores'])
    except OSError:
        return 0 if (run / 'args.json').exists() else -1


@pytest.mark.parametrize('moment', ['stop_after'] + slow_params(
    kill_moments(2, range(0, 6), range(6, 18))),
                         ids=lambda m: m if isinstance(m, str) else f'kill-9-after-{m}-scored')
def test_search_resumes_exactly_after_a_kill(supernet, straight, moment, tmp_path):
    """--stop_after 8, or kill -9 once `moment` candidates are scored (the first inside generation 1), then the
    README's resume (the same command again): the same genotype.json and metrics.jsonl, bit for bit."""
    killed = tmp_path / 'killed'
    if moment == 'stop_after':
        run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', killed,
                   '--stop_after', 8)
        state = json.loads((killed / 'search_checkpoint.json').read_text())['evolution']
        assert len(state['scores']) == 8 and state['generation'] == 1       # stopped inside generation 2
        assert not (killed / 'genotype.json').exists()
        run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--resume', killed)
    else:
        if run_and_kill('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', killed,
                        reached=lambda: scored(killed) >= moment):
            run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', killed)
    a, b = (json.loads((d / 'genotype.json').read_text()) for d in (straight, killed))
    assert [t['candidate'] for t in a['top10']] == [t['candidate'] for t in b['top10']]
    assert [t['score'] for t in a['top10']] == [t['score'] for t in b['top10']]
    assert (straight / 'metrics.jsonl').read_text() == (killed / 'metrics.jsonl').read_text()
    assert (straight / 'search_checkpoint.json').read_bytes() == (killed / 'search_checkpoint.json').read_bytes()


def test_genotype_json_holds_what_stage_3_needs(supernet, straight):
    a = json.loads((straight / 'genotype.json').read_text())
    # genotype.json: best first, decodes, everything stage 3 and a reader need
    assert a['candidate'] == a['top10'][0]['candidate'] and a['score'] == a['top10'][0]['score']
    assert G.load_genotype(straight / 'genotype.json') == G.decode(a['candidate'])
    assert {'angle', 'angle_normalized', 'wlm', 'losses'} <= set(a['components']) and a['metric'] == 'angle+wlm'
    assert a['checkpoints']['model_path'].endswith('checkpoint_epoch_1.pth.tar') and a['args']['seed'] == 7
    gens = [json.loads(ln) for ln in (straight / 'metrics.jsonl').read_text().splitlines()]
    assert [g['generation'] for g in gens] == [1, 2, 3] and len(gens[-1]['top_k']) == 3
    assert len(json.loads((straight / 'search_checkpoint.json').read_text())['evolution']['scores']) == 18


def test_scoring_given_candidates_matches_the_search(supernet, tmp_path, capsys):
    run = tmp_path / 'search'
    assert _cli(ckpts(supernet) + TINY_SEARCH + ['--save', run], capsys)[0] == 0
    scores = json.loads((run / 'search_checkpoint.json').read_text())['evolution']['scores']
    key, info = sorted(scores.items())[0]
    (tmp_path / 'cands.txt').write_text(f'# a comment\n{key}\n\n{key.replace(",", " ")}\n')
    G.save_genotype(tmp_path / 'g.json', G.GENAS_FLATNESS_CIFAR10)
    code, out = _cli(ckpts(supernet) + TINY_SEARCH + ['--candidates', tmp_path / 'cands.txt', '--arch', 'DARTS_V2',
                                                      '--arch', tmp_path / 'g.json', '--save', tmp_path / 'given'],
                     capsys)
    assert code == 0
    lines = [json.loads(ln) for ln in out.out.splitlines() if ln.startswith('{')]
    assert [ln['name'] for ln in lines] == ['line 2', 'line 4', 'DARTS_V2', str(tmp_path / 'g.json')]
    assert lines[0]['score'] == info['score'] == lines[1]['score'] and lines[0]['losses'] == info['losses']
    assert lines[2]['candidate'] == G.encode(G.DARTS_V2)
    assert {'angle', 'angle_normalized', 'wlm', 'poor', 'losses', 'score'} <= set(lines[3])
    assert len((tmp_path / 'given' / 'scores.jsonl').read_text().splitlines()) == 4


def test_reference_checkpoint_layout_loads(supernet, tmp_path, capsys):
    ck = torch.load(supernet / 'checkpoint_epoch_1.pth.tar')
    ref = {'epoch': 250, 'state_dict': {f'module.{k}': v for k, v in ck['state_dict'].items()},
           'optimizer': ck['optimizer']}
    torch.save(ref, tmp_path / 'ref.pth.tar')
    base = ['--model_path', tmp_path / 'ref.pth.tar', '--metric', 'acc', '--dataset', 'synthetic',
            '--arch', 'DARTS_V2', '--max_train_img_size', 32, '--max_val_img_size', 32]
    code, out = _cli(base + ['--save', tmp_path / 'a'], capsys)
    assert code == 2 and '--init_channels 16 --layers 8' in out.err
    code, out = _cli(base + ['--init_channels', 4, '--layers', 3, '--save', tmp_path / 'b'], capsys)
    assert code == 0 and 0 <= json.loads(out.out.splitlines()[0])['acc'] <= 1


@pytest.mark.parametrize('extra, message', [
    (['--metric', 'loss'], "unknown --metric 'loss'; choose one of angle, acc, wlm"),
    (['--stds', '0.003,0.001'], 'strictly increasing'),
    (['--stds', ''], '--stds is empty'),
    (['--init_channels', 8], 'shape mismatches'),
    (['--dataset', 'fashion-mnist', '--data', '/nonexistent'], 'not found'),
])
def test_bad_input_exits_2_with_one_line(supernet, tmp_path, capsys, extra, message):
    code, out = _cli(ckpts(supernet) + TINY_SEARCH + extra + ['--save', tmp_path / 'run'], capsys)
    assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / 'run').exists()


def test_shape_message_names_the_shapes(supernet, tmp_path, capsys):
    code, out = _cli(ckpts(supernet) + TINY_SEARCH + ['--init_channels', 8, '--save', tmp_path / 'r'], capsys)
    assert code == 2 and 'checkpoint (' in out.err and 'vs model (' in out.err


def test_missing_checkpoint_and_changed_flags_on_resume(supernet, tmp_path, capsys):
    code, out = _cli(['--model_path', tmp_path / 'nope.pth.tar', '--save', tmp_path / 'r'], capsys)
    assert code == 2 and 'does not exist' in out.err
    run = tmp_path / 'run'
    assert _cli(ckpts(supernet) + TINY_SEARCH + ['--save', run, '--stop_after', 2], capsys)[0] == 0
    before = snapshot_dir(run)
    code, out = _cli(ckpts(supernet) + TINY_SEARCH[:-2] + ['--seed', 8, '--save', run], capsys)
    assert code == 2 and '--seed 7 -> 8' in out.err
    assert snapshot_dir(run) == before


@pytest.mark.slow
def test_fashion_mnist_wlm_search_writes_a_loadable_genotype(readme_runs):
    """The README's offline wlm search (population 8, 2 generations) on its Fashion-MNIST supernet."""
    sandbox, _ = readme_runs
    out = sandbox / 'runs' / 'search-fmnist-wlm'
    doc = json.loads((out / 'genotype.json').read_text())
    assert doc['metric'] == 'wlm' and len(doc['top10']) == 10 and doc['args']['dataset'] == 'fashion-mnist'
    geno = G.resolve_genotype(str(out / 'genotype.json'))
    assert G.encode(geno) == doc['candidate']
    assert all(t['losses'][0] < 2.3 for t in doc['top10'])           # better than a uniform guess (ln 10)
    scores = [json.loads(ln) for ln in (sandbox / 'scores.jsonl').read_text().splitlines()]
    assert [s['name'] for s in scores] == ['GENAS_FLATNESS_CIFAR10', 'DARTS_V2']
    assert all({'angle', 'wlm', 'losses', 'score'} <= set(s) for s in scores)


@pytest.mark.slow
def test_precision_tau_script(supernet, capsys):
    from benchmarks import precision_tau
    out = precision_tau.main(precision_tau.parse_args([
        '--model_path', str(supernet / 'checkpoint_epoch_1.pth.tar'), '--candidates', '4', '--precisions', 'bf16,tf32',
        '--max_train_img_size', '32', '--max_val_img_size', '64']))
    assert set(out['results']) == {'fp32', 'bf16', 'tf32'}
    assert out['results']['fp32']['kendall_tau_vs_fp32'] == 1.0
    assert out['results']['tf32']['max_relative_score_change'] == 0.0      # TF32 means nothing on a CPU
    assert -1 <= out['results']['bf16']['slope_kendall_tau_vs_fp32'] <= 1


# --- bad input, table by kind: exit 2, one error line, every file that was there unchanged ----------------------

QUICK = ['--max_epochs', 1, '--population_num', 2, '--select_num', 1, '--mutation_num', 0, '--crossover_num', 0,
         '--metric', 'params', '--device', 'cpu']


def kept(before, after):
    """The files of `before` as they are now (a lock file the CLI adds is not a file it overwrote)."""
    return {k: after.get(k) for k in before}


@pytest.fixture(scope='module')
def owned(tiny_supernet, tmp_path_factory):
    """A supernet run (copied) and a finished search over it, both to be written into by the cases."""
    root = tmp_path_factory.mktemp('owned')
    sn = root / 'supernet'
    shutil.copytree(tiny_supernet('darts'), sn)
    code = cli_exit_code(search, ['--model_path', sn / 'checkpoint_epoch_1.pth.tar', *QUICK, '--save', root / 'done'])
    assert code is None or code == 0
    return sn, root / 'done'


def state_with(tmp, **entries):
    """A search run directory whose search_checkpoint.json holds `entries` in place of the evolution state."""
    run = tmp / 'garbage'
    run.mkdir()
    (run / 'search_checkpoint.json').write_text(json.dumps(entries))
    return run


def nan_checkpoint(sn, tmp):
    ckpt = torch.load(sn / 'checkpoint_epoch_1.pth.tar', weights_only=False)
    key = next(k for k in ckpt['state_dict'] if k.endswith('classifier.weight'))
    ckpt['state_dict'][key] = torch.full_like(ckpt['state_dict'][key], float('nan'))
    torch.save(ckpt, tmp / 'nan.pth.tar')
    return tmp / 'nan.pth.tar'


def genotype_file(tmp, doc):
    (tmp / 'cell.json').write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return tmp / 'cell.json'


def darts_v2_with(**change):
    return {'genotype': {**G.genotype_to_dict(G.DARTS_V2), **change}}


def binary(tmp, name='x.bin'):
    (tmp / name).write_bytes(bytes(range(256)) * 4)
    return tmp / name


def pickled(tmp, obj, name='obj.pth.tar'):
    torch.save(obj, tmp / name)
    return tmp / name


# name -> (extra argv, --save, message); callables get (tmp, supernet run, finished search run)
SEARCH_CASES = {
    # a run directory of another kind
    'scoring-into-supernet-run': (lambda t, s, d: ['--arch', 'DARTS_V2'], lambda t, s, d: s, 'stage-1 supernet run'),
    'scoring-into-supernet-run-restart': (lambda t, s, d: ['--arch', 'DARTS_V2', '--restart'], lambda t, s, d: s,
                                          'stage-1 supernet run'),
    'scoring-into-finished-search': (lambda t, s, d: ['--arch', 'DARTS_V2'], lambda t, s, d: d, 'evolutionary search'),
    'scoring-into-finished-search-restart': (lambda t, s, d: ['--arch', 'DARTS_V2', '--restart'], lambda t, s, d: d,
                                             'evolutionary search'),
    'search-into-supernet-run': (lambda t, s, d: [], lambda t, s, d: s, 'stage-1 supernet run'),
    'search-restart-into-supernet-run': (lambda t, s, d: ['--restart'], lambda t, s, d: s, 'stage-1 supernet run'),
    'save-is-a-file': (lambda t, s, d: [], lambda t, s, d: binary(t, 'file'), 'is an existing file'),
    # search checkpoints of the wrong shape
    'resume-list': (lambda t, s, d: ['--resume', state_with(t)], lambda t, s, d: t / 'garbage', 'not a search'),
    'resume-binary': (lambda t, s, d: ['--resume', binary(t, 'search_checkpoint.json')], lambda t, s, d: t,
                      'binary file'),
    'resume-evolution-empty': (lambda t, s, d: ['--resume', state_with(t, args={}, evolution={})],
                               lambda t, s, d: t / 'garbage', "no 'generation' entry"),
    'resume-evolution-string': (lambda t, s, d: ['--resume', state_with(t, args={}, evolution='abc')],
                                lambda t, s, d: t / 'garbage', "'evolution' entry is a str"),
    'resume-args-list': (lambda t, s, d: ['--resume', state_with(t, args=[], evolution={})],
                         lambda t, s, d: t / 'garbage', "'args' entry is a list"),
    'resume-evolution-garbage': (lambda t, s, d: ['--resume', state_with(
        t, args={}, evolution={'generation': 0, 'population': ['abc'], 'scores': {'x': 5}, 'top_k': [],
                               'top_keep': [], 'history': [], 'done': False, 'rng': [3, [1], None]})],
        lambda t, s, d: t / 'garbage', 'wrong form'),
    'resume-evolution-bad-rng': (lambda t, s, d: ['--resume', state_with(
        t, args={}, evolution={'generation': 0, 'population': [], 'scores': {}, 'top_k': [], 'top_keep': [],
                               'history': [], 'done': False, 'rng': [3, [1, 2], None]})],
        lambda t, s, d: t / 'garbage', 'random state'),
    # supernet checkpoints
    'model-path-text': (lambda t, s, d: ['--model_path', genotype_file(t, 'hello')], lambda t, s, d: t, 'cell.json'),
    'model-path-pickled-list': (lambda t, s, d: ['--model_path', pickled(t, [1, 2])], lambda t, s, d: t,
                                'obj.pth.tar'),
    'model-path-pickled-int': (lambda t, s, d: ['--model_path', pickled(t, 5)], lambda t, s, d: t, 'obj.pth.tar'),
    'model-path-state-of-ints': (lambda t, s, d: ['--model_path', pickled(
        t, {'state_dict': {'classifier.weight': 5}})], lambda t, s, d: t, 'not a tensor'),
    'model-path-nan-weights': (lambda t, s, d: ['--model_path', nan_checkpoint(s, t)], lambda t, s, d: t,
                               'non-finite weights'),
    'init-model-path-binary': (lambda t, s, d: ['--metric', 'angle', '--init_model_path', binary(t)],
                               lambda t, s, d: t, 'x.bin'),
    # genotypes and candidate files
    'arch-op-as-list': (lambda t, s, d: ['--arch', genotype_file(t, darts_v2_with(
        normal=[[['sep_conv_3x3'], 0]] * 8))], lambda t, s, d: t, 'cell.json'),
    'arch-candidate-abc': (lambda t, s, d: ['--arch', genotype_file(t, {'candidate': 'abc'})], lambda t, s, d: t,
                           'cell.json'),
    'arch-candidate-5': (lambda t, s, d: ['--arch', genotype_file(t, {'candidate': 5})], lambda t, s, d: t,
                         'cell.json'),
    'arch-candidate-nan': (lambda t, s, d: ['--arch', genotype_file(t, '{"candidate": [NaN, 1, 2]}')],
                           lambda t, s, d: t, 'cell.json'),
    'arch-nulls': (lambda t, s, d: ['--arch', genotype_file(t, {'genotype': {'normal': None, 'normal_concat': None,
                                                                            'reduce': None, 'reduce_concat': None}})],
                   lambda t, s, d: t, 'cell.json'),
    'arch-concat-5': (lambda t, s, d: ['--arch', genotype_file(t, darts_v2_with(normal_concat=5))], lambda t, s, d: t,
                      'cell.json'),
    'arch-binary': (lambda t, s, d: ['--arch', binary(t, 'cell.json')], lambda t, s, d: t, 'cell.json'),
    'candidates-binary': (lambda t, s, d: ['--candidates', binary(t)], lambda t, s, d: t, 'x.bin'),
    'candidates-garbage': (lambda t, s, d: ['--candidates', genotype_file(t, 'abc def\n')], lambda t, s, d: t,
                           'line 1'),
    # numbers
    'seed-negative': (lambda t, s, d: ['--seed', -1], lambda t, s, d: t, '--seed must be >= 0'),
    'seed-beyond-64-bits': (lambda t, s, d: ['--seed', 2 ** 64], lambda t, s, d: t, '--seed must be'),
    'mutation-num-negative': (lambda t, s, d: ['--mutation_num', -1], lambda t, s, d: t, '--mutation_num'),
    'crossover-num-negative': (lambda t, s, d: ['--crossover_num', -1], lambda t, s, d: t, '--crossover_num'),
    'm-prob-negative': (lambda t, s, d: ['--m_prob', -0.1], lambda t, s, d: t, '--m_prob'),
    'm-prob-above-1': (lambda t, s, d: ['--m_prob', 1.5], lambda t, s, d: t, '--m_prob'),
    'stop-after-negative': (lambda t, s, d: ['--stop_after', -1], lambda t, s, d: t, '--stop_after'),
    'budget-channels-0': (lambda t, s, d: ['--flops_limit', '1G', '--budget_channels', 0], lambda t, s, d: t,
                          '--budget_channels'),
    'budget-layers-0': (lambda t, s, d: ['--flops_limit', '1G', '--budget_layers', 0], lambda t, s, d: t,
                        '--budget_layers'),
    'wlm-weight-nan': (lambda t, s, d: ['--wlm_weight', 'nan'], lambda t, s, d: t, '--wlm_weight'),
    'wlm-weight-inf': (lambda t, s, d: ['--wlm_weight', 'inf'], lambda t, s, d: t, '--wlm_weight'),
    'acc-weight-nan': (lambda t, s, d: ['--acc_weight', 'nan'], lambda t, s, d: t, '--acc_weight'),
    'max-epochs-0': (lambda t, s, d: ['--max_epochs', 0], lambda t, s, d: t, '--max_epochs'),
    'population-num-0': (lambda t, s, d: ['--population_num', 0], lambda t, s, d: t, '--population_num'),
}


def search_case(name, tmp, owned):
    """(argv, the folder watched) of a case; the supernet and the finished search of `owned` are copied first."""
    sn, done = (shutil.copytree(p, tmp / p.name) for p in owned)
    extra, save, message = SEARCH_CASES[name]
    extra = [str(a) for a in extra(tmp, sn, done)]
    save = save(tmp, sn, done)
    model = [] if '--model_path' in extra else ['--model_path', sn / 'checkpoint_epoch_1.pth.tar']
    if '--resume' in extra:
        save = Path(extra[extra.index('--resume') + 1]).parent if save == tmp else save
        return [*model, *QUICK, *extra], save, message
    return [*model, *QUICK, *extra, '--save', save], save if save.is_dir() else save.parent, message


@pytest.mark.parametrize('name', SEARCH_CASES)
def test_search_refuses_bad_input_and_keeps_every_file(name, owned, tmp_path, capsys):
    argv, watched, message = search_case(name, tmp_path, owned)
    before = snapshot_dir(tmp_path)
    code, out = _cli(argv, capsys)
    assert_refused(code, out.err, message, before, kept(before, snapshot_dir(tmp_path)))
    assert watched.exists()


def test_a_supernet_of_nan_weights_is_refused_naming_it(owned, tmp_path, capsys):
    code, out = _cli(['--model_path', nan_checkpoint(owned[0], tmp_path), *QUICK, '--save', tmp_path / 's'], capsys)
    assert code == 2 and 'nan.pth.tar holds non-finite weights' in out.err
    assert not (tmp_path / 's' / 'search_checkpoint.json').exists()


def test_a_nan_score_is_an_error_naming_the_candidate(owned, tmp_path, capsys, monkeypatch):
    """A metric that gives NaN for the second candidate (and inf for none): the evolution stops there, naming it,
    and its search checkpoint holds the first candidate only."""
    from evolutionary_search.metrics import METRICS
    seen = []

    def diverging(ctx, cand):
        seen.append(','.join(map(str, cand)))
        return {'score': 1.0 if len(seen) == 1 else float('nan')}
    monkeypatch.setitem(METRICS, 'params', diverging)
    code, out = _cli(['--model_path', owned[0] / 'checkpoint_epoch_1.pth.tar', *QUICK, '--save', tmp_path / 's'],
                     capsys)
    assert code == 2 and f'candidate {seen[1]} scored nan' in out.err, out.err
    scores = json.loads((tmp_path / 's' / 'search_checkpoint.json').read_text())['evolution']['scores']
    assert list(scores) == [seen[0]]
