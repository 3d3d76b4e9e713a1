"""Every failure a user can cause ends with exactly one `error:` line naming the fix, exit status 2, and every
file that was there before byte-identical; one writer per run directory; a full disk loses nothing.
(Kill -9 and resume is tested per stage, in test_train_supernet / test_search / test_retrain.)"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoints
import training
import utils
from conftest import ROOT, cli_exit_code, snapshot_dir
from evolutionary_search import search
from retrain import retrain, visualize
from train_supernet import train

SUPERNET = ['--dataset', 'synthetic', '--init_channels', 4, '--layers', 3, '--batch_size', 32, '--train_subset', 96,
            '--valid_subset', 32, '--valid_bn_images', 32, '--seed', 1, '--report_freq', 1]
SEARCH = ['--max_epochs', 1, '--population_num', 3, '--select_num', 2, '--mutation_num', 1, '--crossover_num', 1,
          '--max_train_img_size', 32, '--max_val_img_size', 32, '--batch_size', 32, '--test_batch_size', 32,
          '--metric', 'acc', '--seed', 7]
RETRAIN = ['--dataset', 'synthetic', '--arch', 'DARTS_V2', '--init_channels', 4, '--layers', 3, '--batch_size', 32,
           '--learning_rate', 0.05, '--train_subset', 64, '--test_subset', 32, '--report_freq', 1, '--seed', 1,
           '--epochs', 1]
STAGES = {'train': train, 'search': search, 'retrain': retrain, 'visualize': visualize}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A finished stage-1 run, a finished stage-3 run, a binary and a comments-only file."""
    base = tmp_path_factory.mktemp('reliability')
    assert cli_exit_code(train, SUPERNET + ['--epochs', 1, '--save', base / 'supernet']) == 0
    assert cli_exit_code(retrain, RETRAIN + ['--save', base / 'retrain']) == 0
    (base / 'comments.txt').write_text('# only a comment\n\n   # another\n')
    (base / 'afile').write_text('not a directory\n')
    return base


def supernet_ckpts(base):
    return ['--init_model_path', base / 'supernet' / 'checkpoint_epoch_0.pth.tar',
            '--model_path', base / 'supernet' / 'checkpoint_epoch_1.pth.tar']


def run_cli(stage, argv, capsys):
    """(exit status, stderr) of a stage CLI run in this process."""
    code = cli_exit_code(STAGES[stage], [str(a) for a in argv])
    return code, capsys.readouterr().err


def error_lines(err):
    return [ln for ln in err.splitlines() if ln.startswith('error:')]


# (id, stage, argv given the fixture's base folder, text the one error line must hold)
CASES = [
    ('binary --arch stage 2', 'search', lambda b: supernet_ckpts(b) + SEARCH + [
        '--arch', b / 'supernet' / 'last.pth.tar', '--save', b / 'out'], 'looks like a PyTorch checkpoint'),
    ('binary --arch stage 3', 'retrain', lambda b: RETRAIN + ['--arch', b / 'retrain' / 'checkpoint.pth.tar',
                                                              '--save', b / 'out'], 'not a genotype JSON'),
    ('binary --arch visualize', 'visualize', lambda b: ['--arch', b / 'retrain' / 'model_best.pth.tar',
                                                        '--out', b / 'out' / 'cell'], 'not a genotype JSON'),
    ('binary --candidates', 'search', lambda b: supernet_ckpts(b) + SEARCH + [
        '--candidates', b / 'supernet' / 'checkpoint_epoch_0.pth.tar', '--save', b / 'out'],
     'looks like a PyTorch checkpoint (zip archive), not a text file of candidates'),
    ('--save is a file, stage 1', 'train', lambda b: SUPERNET + ['--epochs', 1, '--save', b / 'afile'],
     'is an existing file, not a directory'),
    ('--save is a file, stage 2', 'search', lambda b: supernet_ckpts(b) + SEARCH + ['--save', b / 'afile'],
     'is an existing file, not a directory'),
    ('--save is a file, stage 3', 'retrain', lambda b: RETRAIN + ['--save', b / 'afile'],
     'is an existing file, not a directory'),
    ('comments-only --candidates', 'search', lambda b: supernet_ckpts(b) + SEARCH + [
        '--candidates', b / 'comments.txt', '--save', b / 'out'], 'holds no candidate (only comments'),
    ('--select_num > --population_num', 'search', lambda b: supernet_ckpts(b) + SEARCH + [
        '--select_num', 5, '--save', b / 'out'], '--select_num 5 exceeds --population_num 3'),
    ('negative --auxiliary_weight', 'retrain', lambda b: RETRAIN + ['--auxiliary_weight', -0.4, '--save', b / 'out'],
     '--auxiliary_weight must be >= 0'),
    ('--model_path a directory', 'search', lambda b: SEARCH + ['--model_path', b / 'supernet', '--save', b / 'out'],
     f'is a directory, not a checkpoint file; pass the file inside it, e.g. {{b}}/supernet/checkpoint_epoch_1.pth.tar'),
    ('--init_model_path a directory', 'search', lambda b: SEARCH + [
        '--metric', 'angle', '--model_path', b / 'supernet' / 'checkpoint_epoch_1.pth.tar',
        '--init_model_path', b / 'supernet', '--save', b / 'out'], 'supernet/checkpoint_epoch_0.pth.tar'),
    ('--evaluate a directory', 'retrain', lambda b: RETRAIN + ['--evaluate', b / 'retrain'],
     'e.g. {b}/retrain/model_best.pth.tar'),
    ('stage-3 resume with another --arch', 'retrain', lambda b: RETRAIN + [
        '--arch', 'PDARTS', '--epochs', 2, '--resume', b / 'retrain'], 'was trained with --arch DARTS_V2, not PDARTS'),
    ('stage-1 re-run over a finished run', 'train', lambda b: SUPERNET + ['--epochs', 2, '--save', b / 'supernet'],
     'already holds a run'),
    ('stage-3 re-run over a finished run', 'retrain', lambda b: RETRAIN + ['--save', b / 'retrain'],
     'already holds a run'),
    ('--resume of a missing run', 'train', lambda b: SUPERNET + ['--epochs', 2, '--resume', b / 'nothing'],
     'does not exist'),
    ('stage-1 resume of a finished run', 'train', lambda b: SUPERNET + ['--epochs', 1, '--resume', b / 'supernet'],
     'already finished 1 epochs; raise --epochs to train further'),
    ('stage-3 resume of a finished run', 'retrain', lambda b: RETRAIN + ['--resume', b / 'retrain'],
     'already finished 1 epochs; raise --epochs to train further'),
]


@pytest.mark.parametrize('stage, argv, message', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_nothing_changed(runs, stage, argv, message, capsys):
    before = snapshot_dir(runs)
    code, err = run_cli(stage, argv(runs), capsys)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and message.format(b=runs) in lines[0], err
    assert snapshot_dir(runs) == before
    assert not (runs / 'out').exists() and not (runs / 'nothing').exists()


def copy_run(src, dst, drop=()):
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_stage1_resume_under_another_world_size_is_refused_unless_asked(runs, tmp_path, capsys):
    run = copy_run(runs / 'supernet', tmp_path / 'run')
    last = torch.load(run / 'last.pth.tar', weights_only=True)
    assert last['world_size'] == 1
    last['world_size'] = 2                       # as if trained by two processes
    torch.save(last, run / 'last.pth.tar')
    before = snapshot_dir(run)
    code, err = run_cli('train', SUPERNET + ['--epochs', 2, '--resume', run], capsys)
    assert code == 2 and len(error_lines(err)) == 1, err
    assert 'trained by 2 process(es) (global batch 64); this run has 1 (global batch 32)' in err
    assert '--allow_world_size_change' in err and snapshot_dir(run) == before
    code, err = run_cli('train', SUPERNET + ['--epochs', 2, '--resume', run, '--allow_world_size_change'], capsys)
    assert code == 0 and 'WARNING: ' in err and 'continuing as --allow_world_size_change asks' in err


def test_stage1_killed_in_its_first_epoch_is_refused_then_restarts_exactly(runs, tmp_path, capsys):
    """A kill after the epoch-1 metrics line but before last.pth.tar: a plain re-run is refused; --resume DIR
    starts over from checkpoint_epoch_0 and ends equal to the uninterrupted run, with one line per epoch."""
    run = copy_run(runs / 'supernet', tmp_path / 'run', drop=['last.pth.tar'])
    before = snapshot_dir(run)
    code, err = run_cli('train', SUPERNET + ['--epochs', 1, '--save', run], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and f'pass --resume {run} to start it over' in err
    assert snapshot_dir(run) == before
    code, err = run_cli('train', SUPERNET + ['--epochs', 1, '--resume', run], capsys)
    assert code == 0, err
    assert [r['epoch'] for r in utils.read_metrics(run / 'metrics.jsonl')] == [1]
    a = torch.load(runs / 'supernet' / 'last.pth.tar', weights_only=True)
    b = torch.load(run / 'last.pth.tar', weights_only=True)
    assert all(torch.equal(v, b['state_dict'][k]) for k, v in a['state_dict'].items())
    assert (run / 'checkpoint_epoch_0.pth.tar').read_bytes() == before['checkpoint_epoch_0.pth.tar']


def _nonfinite_tensors(run):
    bad = 0
    for p in Path(run).glob('*.pth.tar'):
        state = torch.load(p, weights_only=True)['state_dict']
        bad += sum(1 for t in state.values() if t.is_floating_point() and not torch.isfinite(t).all())
    return bad


@pytest.mark.parametrize('stage, argv', [
    ('train', SUPERNET + ['--epochs', 2, '--learning_rate', 1e6]),
    ('retrain', RETRAIN + ['--epochs', 2, '--learning_rate', 1e5]),
], ids=['stage 1', 'stage 3'])
def test_diverged_run_exits_2_and_saves_nothing_non_finite(stage, argv, tmp_path, capsys):
    run = tmp_path / 'run'
    code, err = run_cli(stage, argv + ['--save', run], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'became' in lines[0] and 'lower --learning_rate' in lines[0], err
    assert _nonfinite_tensors(run) == 0
    named = [w.rstrip(',;') for w in lines[0].split() if w.startswith(str(tmp_path))]
    assert named and all(os.path.exists(p) for p in named), lines[0]


def test_resume_hint_names_a_checkpoint_that_exists(tmp_path):
    assert '--resume' in training.resume_hint(tmp_path, 'last.pth.tar') and 'starts over' in training.resume_hint(
        tmp_path, 'last.pth.tar')
    (tmp_path / 'last.pth.tar').write_bytes(b'x')
    assert training.resume_hint(tmp_path, 'last.pth.tar') == f'resume from {tmp_path / "last.pth.tar"} (the last good ' \
                                                          'checkpoint)'


def test_require_finite_weights_counts_bad_tensors():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    training.require_finite_weights(net, 'here', 'fix')
    with torch.no_grad():
        net[1].running_var[0] = float('inf')
        net[0].weight[1, 1] = float('nan')
    with pytest.raises(utils.UserError, match=r'^2 weight tensors became NaN or infinite here \(e.g. 0.weight\)'):
        training.require_finite_weights(net, 'here', 'fix')


# --- one writer per run directory -----------------------------------------------------------------------

def test_second_process_on_a_run_directory_exits_2_naming_the_first(runs, tmp_path):
    """Two searches with different seeds in one --save: the second ends at once, the first's outputs are its own."""
    run = tmp_path / 'run'
    env = dict(os.environ, PYTHONHASHSEED='0', OMP_NUM_THREADS='1')
    cmd = [sys.executable, str(ROOT / 'evolutionary_search' / 'search.py'), *map(str, supernet_ckpts(runs) + SEARCH)]
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


def test_lock_is_reentrant_in_one_process_and_released_after_main(tmp_path):
    utils.lock_run_dir(tmp_path / 'r')
    utils.lock_run_dir(tmp_path / 'r')                 # the same process: no-op
    assert (tmp_path / 'r' / '.lock').read_text() == f'{os.getpid()}\n'
    probe = [sys.executable, '-c', f'import utils; utils.lock_run_dir({str(tmp_path / "r")!r})']   # cwd: the repo
    held = subprocess.run(probe, capture_output=True, text=True, cwd=ROOT)
    assert held.returncode != 0 and f'PID {os.getpid()}' in held.stderr
    utils.release_run_dirs()
    assert (tmp_path / 'r' / '.lock').read_text() == ''
    assert subprocess.run(probe, capture_output=True, text=True, cwd=ROOT).returncode == 0


# --- full or read-only disks ----------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs of that size; skipped where mounting is not allowed."""
    mounted = []

    def mount(size, ro=False):
        point = tmp_path / f'fs{len(mounted)}'
        point.mkdir()
        opts = f'size={size}' + (',ro' if ro else '')
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(point)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f'cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}')
        mounted.append(point)
        return point
    yield mount
    for point in mounted:
        subprocess.run(['umount', '-l', str(point)], capture_output=True)


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    """Runs everywhere: ENOSPC faked at the fsync of the temporary file."""
    path = tmp_path / 'last.pth.tar'
    checkpoints.save_checkpoint({'epoch': 1}, path)
    old = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(utils.os, 'fsync', full)
    with pytest.raises(utils.UserError, match=rf'^{path} was not written: the disk is full; free space'):
        checkpoints.save_checkpoint({'epoch': 2}, path)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ['last.pth.tar']


def test_append_on_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / 'metrics.jsonl'
    utils.append_line(path, '{"epoch": 1}')
    real_open = open

    class Full:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:5])
            self.f.flush()
            raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr('builtins.open', Full)
    with pytest.raises(utils.UserError, match='the disk is full'):
        utils.append_line(path, '{"epoch": 2}')
    monkeypatch.undo()
    assert path.read_text() == '{"epoch": 1}\n'


def test_stage1_checkpoint_on_a_full_disk(tmpfs, capsys):
    """Room for the initial weights and epoch 1's last.pth.tar, not for checkpoint_epoch_2: one line naming
    that file, no temporary file left, last.pth.tar still the good epoch-1 checkpoint."""
    run = tmpfs('3300k') / 'run'
    code, err = run_cli('train', SUPERNET + ['--epochs', 2, '--save', run], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert f'{run / "checkpoint_epoch_2.pth.tar"} was not written: the disk is full' in lines[0]
    assert not list(run.glob('*.tmp')) and 'Traceback' not in err
    assert checkpoints.load_checkpoint(run / 'last.pth.tar')['epoch'] == 1


def test_search_on_a_full_disk(runs, tmpfs, capsys):
    """A search whose disk fills up: one line, no temporary file, the search checkpoint (if any) readable."""
    fs = tmpfs('40k')
    code, err = run_cli('search', supernet_ckpts(runs) + SEARCH + ['--max_epochs', 3, '--save', fs / 'run'], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'the disk is full' in lines[0] and 'Traceback' not in err, err
    assert not list((fs / 'run').glob('*.tmp'))
    if (fs / 'run' / 'search_checkpoint.json').exists():
        json.loads((fs / 'run' / 'search_checkpoint.json').read_text())


def test_cell_diagram_on_a_full_disk(tmpfs, capsys):
    fs = tmpfs('4k')
    (fs / 'filler').write_bytes(b'\0' * 4096)
    code, err = run_cli('visualize', ['--arch', 'DARTS_V2', '--out', fs / 'cell'], capsys)
    # The folder is claimed for drawings (its run.json) before any drawing: that first write fails; the lock file
    # is empty.
    assert code == 2 and error_lines(err) == [f'error: {fs / "run.json"} was not written: the disk is full; '
                                              'free space (or choose a writable --save) and resume: the files written '
                                              'before are intact'], err
    assert sorted(p.name for p in fs.iterdir()) == ['.lock', 'filler'] and (fs / '.lock').read_bytes() == b''


def test_save_on_a_read_only_file_system(tmpfs, capsys):
    ro = tmpfs('64k', ro=True)
    code, err = run_cli('retrain', RETRAIN + ['--save', ro / 'run'], capsys)
    assert code == 2 and error_lines(err) == [
        f'error: cannot create the run directory {ro / "run"} (Read-only file system); choose a writable --save '
        'directory'], err
