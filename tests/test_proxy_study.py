"""The proxy study (proxy_study/): ground truth that resumes after a kill and splits over torchrun ranks,
scores of every metric, the report, and one-line errors for bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import genotypes as G
from conftest import ROOT, assert_refused, cli_exit_code, refused_in_copy, run_script, snapshot_dir
from proxy_study import ground_truth, report, scores, stats
from proxy_study.cells import sample_cells
from proxy_study.records import read_ground_truth, read_scores
from spaces import get_space
from spaces.darts import uniform_candidate

GT_FLAGS = {'dataset': 'synthetic', 'num_cells': 3, 'seeds': 2, 'epochs': 1, 'init_channels': 4, 'layers': 3,
            'batch_size': 32, 'train_subset': 192, 'test_subset': 64, 'drop_path_prob': 0, 'cutout_length': 0,
            'device': 'cpu'}


def gt_argv(**changes):
    """Command-line arguments of the tiny ground truth, with some flags changed (None: left out)."""
    flags = {**GT_FLAGS, **changes}
    return [a for k, v in flags.items() if v is not None for a in (f'--{k}', v)] + ['--no-auxiliary']


GT = gt_argv()
ONE_THREAD = {'OMP_NUM_THREADS': '1'}       # the same thread count in every run: bit-identical results


@pytest.fixture(scope='module')
def supernet(tmp_path_factory):
    run = tmp_path_factory.mktemp('study') / 'supernet'
    run_script('train_supernet/train.py', '--dataset', 'synthetic', '--init_channels', 4, '--layers', 3,
               '--batch_size', 16, '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 32, '--epochs', 1,
               '--seed', 1, '--save', run, '--device', 'cpu', env_extra=ONE_THREAD)
    return run


@pytest.fixture(scope='module')
def gt_run(tmp_path_factory):
    run = tmp_path_factory.mktemp('study') / 'gt'
    run_script('proxy_study/ground_truth.py', *GT, '--save', run, env_extra=ONE_THREAD)
    return run


def test_uniform_sample_is_valid_seeded_and_extends():
    import random
    import genotypes
    assert genotypes.is_valid(uniform_candidate(random.Random(0)))
    five, eight = sample_cells(5, 3, get_space(None)), sample_cells(8, 3, get_space(None))
    assert eight[:5] == five and len({c.candidate for c in eight}) == 8


def test_ground_truth_file(gt_run):
    lines = [json.loads(ln) for ln in (gt_run / 'ground_truth.jsonl').read_text().splitlines()]
    assert [(ln['candidate'], ln['seed']) for ln in lines] == [
        (list(c.candidate), s) for c in sample_cells(3, 0, get_space(None)) for s in (0, 1)]
    for ln in lines:
        assert 0 <= ln['test_acc'] <= 1 and ln['params'] > 0 and ln['macs'] > 0
        assert ln['protocol']['epochs'] == 1 and ln['protocol']['dataset'] == 'synthetic'
    assert lines[0]['test_acc'] != lines[1]['test_acc'] or lines[0]['test_loss'] != lines[1]['test_loss']


@pytest.mark.slow
def test_ground_truth_resumes_after_a_kill_mid_cell(gt_run, tmp_path):
    run = tmp_path / 'killed'
    env = dict(os.environ, PYTHONHASHSEED='0', **ONE_THREAD)
    proc = subprocess.Popen([sys.executable, str(ROOT / 'proxy_study/ground_truth.py'), *map(str, GT), '--save', run],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list((run / 'pairs').glob('*.json')) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)               # the second pair is being trained now
    proc.wait()
    done = list((run / 'pairs').glob('*.json'))
    assert 1 <= len(done) < 6 and not (run / 'ground_truth.jsonl').exists()
    run_script('proxy_study/ground_truth.py', *GT, '--save', run, env_extra=ONE_THREAD)
    assert (run / 'ground_truth.jsonl').read_bytes() == (gt_run / 'ground_truth.jsonl').read_bytes()


@pytest.mark.slow
def test_two_processes_write_the_same_file_as_one(gt_run, tmp_path):
    run = tmp_path / 'ddp'
    env = dict(os.environ, PYTHONHASHSEED='0', **ONE_THREAD)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(ROOT / 'proxy_study/ground_truth.py'), *map(str, GT), '--save', run],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / 'ground_truth.jsonl').read_bytes() == (gt_run / 'ground_truth.jsonl').read_bytes()
    assert '3 to train here (rank 0 of 2)' in proc.stderr        # rank 0 trained half the pairs


def test_end_to_end_scores_and_report(supernet, gt_run, tmp_path):
    gt_file = gt_run / 'ground_truth.jsonl'
    out = scores.main(scores.parse_args([str(a) for a in [
        '--ground_truth', gt_file, '--model_path', supernet / 'checkpoint_epoch_1.pth.tar',
        '--init_model_path', supernet / 'checkpoint_epoch_0.pth.tar', '--max_train_img_size', 32,
        '--max_val_img_size', 64, '--batch_size', 32, '--device', 'cpu', '--save', tmp_path / 'scores']]))
    table = read_scores(out)
    from evolutionary_search.metrics import DETERMINISTIC, METRICS
    assert set(table) == set(METRICS)
    for metric, per_cell in table.items():
        assert len(per_cell) == 3
        assert all(sorted(s) == ([0] if metric in DETERMINISTIC else [0, 1]) for s in per_cell.values())
    doc = report.main(report.parse_args([str(a) for a in ['--ground_truth', gt_file, '--scores', out, '--out',
                                                          tmp_path / 'report', '--resamples', 1000]]))
    files = {p.name for p in (tmp_path / 'report').iterdir()}
    assert {'report.md', 'report.json', 'taus.png', 'scatter_angle_plus_wlm.png', 'scatter_wlm_l0.png'} <= files
    gt = read_ground_truth(gt_file)
    by_name = {m['metric']: m for m in doc['metrics']}
    for metric, per_cell in table.items():      # the report's tau is the tau of the mean scores, by hand
        mean = [np.mean(list(per_cell[c].values())) for c in gt.cells]
        assert by_name[metric]['tau']['value'] == pytest.approx(stats.kendall_tau(mean, gt.mean), nan_ok=True)
    taus = [m['tau']['value'] for m in doc['metrics']]
    assert taus == sorted(taus, key=lambda t: -t if not np.isnan(t) else np.inf)
    assert doc['ceiling']['value'] == pytest.approx(stats.kendall_tau(gt.acc[:, 0], gt.acc[:, 1]))
    text = (tmp_path / 'report' / 'report.md').read_text()
    assert '| `wlm_l0` | 3 |' in text and 'Ground-truth ceiling' in text and "'epochs': 1" not in text
    assert 'epochs: 1' in text


# --- bad input: one line, exit 2, nothing written ------------------------------------------------------

def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


def test_malformed_ground_truth_line(gt_run, tmp_path, capsys):
    bad = tmp_path / 'gt.jsonl'
    lines = (gt_run / 'ground_truth.jsonl').read_text().splitlines()
    bad.write_text('\n'.join(lines[:2] + ['{"candidate": [1, 2], "seed": 0, "test_acc": "high"}'] + lines[2:]) + '\n')
    (tmp_path / 'report').mkdir()
    (tmp_path / 'report' / 'report.md').write_text('old')
    before = snapshot_dir(tmp_path)
    assert cli_exit_code(report, ['--ground_truth', bad, '--scores', bad, '--out', tmp_path / 'report']) == 2
    assert 'line 3' in error_line(capsys) and snapshot_dir(tmp_path) == before
    bad.write_text(lines[0] + '\n{not json\n')
    assert cli_exit_code(report, ['--ground_truth', bad, '--scores', bad, '--out', tmp_path / 'r2']) == 2
    assert 'line 2 is not valid JSON' in error_line(capsys) and not (tmp_path / 'r2').exists()


def test_candidates_not_in_the_space(tmp_path, capsys):
    cands = tmp_path / 'cands.txt'
    cands.write_text('3,6,0,4,4,0,6,6,0,0,0,0,4,3,5,2,0,6,4,0,3,0,6,0,0,5,0,7\n1,1,1,1,1,1,1,1,1,1,1,1,1,1,'
                     '1,1,1,1,1,1,1,1,1,1,1,1,1,1\n')
    assert cli_exit_code(ground_truth, [*gt_argv(num_cells=None), '--candidates', cands, '--save', tmp_path / 'gt']) == 2
    assert 'line 2' in error_line(capsys) and not (tmp_path / 'gt').exists()


def test_fewer_than_three_cells(gt_run, tmp_path, capsys):
    assert cli_exit_code(ground_truth, [*gt_argv(num_cells=2), '--save', tmp_path / 'gt']) == 2
    assert 'at least 3' in error_line(capsys) and not (tmp_path / 'gt').exists()
    two = tmp_path / 'two.jsonl'
    two.write_text(''.join(ln + '\n' for ln in (gt_run / 'ground_truth.jsonl').read_text().splitlines()[:4]))
    assert cli_exit_code(report, ['--ground_truth', two, '--scores', two, '--out', tmp_path / 'r']) == 2
    assert 'at least 3' in error_line(capsys) and not (tmp_path / 'r').exists()


def test_supernet_of_another_dataset(supernet, gt_run, tmp_path, capsys):
    other = tmp_path / 'gt.jsonl'
    lines = [json.loads(ln) for ln in (gt_run / 'ground_truth.jsonl').read_text().splitlines()]
    other.write_text(''.join(json.dumps({**ln, 'protocol': {**ln['protocol'], 'dataset': 'fashion-mnist'}}) + '\n'
                             for ln in lines))
    argv = ['--ground_truth', other, '--model_path', supernet / 'checkpoint_epoch_1.pth.tar', '--metrics', 'acc',
            '--device', 'cpu', '--save', tmp_path / 'scores']
    assert cli_exit_code(scores, argv) == 2
    assert 'trained on synthetic but the ground truth on fashion-mnist' in error_line(capsys)
    assert not (tmp_path / 'scores').exists()


def test_changed_protocol_is_refused(gt_run, capsys):
    before = snapshot_dir(gt_run)
    argv = [*gt_argv(epochs=2), '--save', gt_run]
    assert cli_exit_code(ground_truth, argv) == 2
    assert '--epochs 1 -> 2' in error_line(capsys) and snapshot_dir(gt_run) == before


# --- bad input, table by kind: exit 2, one error line, every file that was there unchanged ----------------------

CELLS = [G.encode(g) for g in (G.DARTS_V2, G.PDARTS, G.PC_DARTS)]


def kept(before, after):
    """The files of `before` as they are now (a lock file the CLI adds is not a file it overwrote)."""
    return {k: after.get(k) for k in before}


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def table_files(tmp, sn):
    """A hand-written ground truth and scores file of three cells, and a supernet run (copied)."""
    gt = write(tmp / 'gt' / 'ground_truth.jsonl', ''.join(
        json.dumps({'candidate': c, 'seed': s, 'test_acc': 0.5 + 0.1 * i + 0.01 * s}) + '\n'
        for i, c in enumerate(CELLS) for s in (0, 1)))
    sc = write(tmp / 'scores' / 'scores.jsonl', ''.join(
        json.dumps({'candidate': c, 'metric': 'params', 'seed': 0, 'score': float(i)}) + '\n'
        for i, c in enumerate(CELLS)))
    return gt, sc, shutil.copytree(sn, tmp / 'supernet')


BINARY = bytes(range(256)) * 4


def nan_weights(sn):
    ckpt = torch.load(sn / 'checkpoint_epoch_1.pth.tar', weights_only=False)
    ckpt['state_dict'] = {k: v * float('nan') if v.is_floating_point() else v for k, v in ckpt['state_dict'].items()}
    torch.save(ckpt, sn / 'nan.pth.tar')
    return sn / 'nan.pth.tar'


# name -> (callable (tmp, ground truth, scores file, supernet run) -> {flag: value}, message)
SCORES_CASES = {
    'ground-truth-binary': (lambda t, g, s, n: {'--ground_truth': write(g, BINARY)}, 'binary file'),
    'ground-truth-protocol-string': (lambda t, g, s, n: {'--ground_truth': write(g, json.dumps(
        {'candidate': CELLS[0], 'seed': 0, 'test_acc': 0.5, 'protocol': 'abc'}))}, '"protocol" must be an object'),
    'save-is-a-file': (lambda t, g, s, n: {'--save': s}, 'is an existing file'),
    'save-is-a-supernet-run': (lambda t, g, s, n: {'--save': n}, 'stage-1 supernet run'),
    'save-is-a-search-scoring': (lambda t, g, s, n: {'--save': s.parent}, 'stage-2 scoring'),
    'settings-garbage': (lambda t, g, s, n: {'--save': write(t / 'run' / 'settings.json', '[1, 2').parent},
                         'not valid JSON'),
    'settings-binary': (lambda t, g, s, n: {'--save': write(t / 'run' / 'settings.json', BINARY).parent},
                        'binary file'),
    'settings-a-list': (lambda t, g, s, n: {'--save': write(t / 'run' / 'settings.json', '[]').parent},
                        'not the settings.json'),
    'model-path-text': (lambda t, g, s, n: {'--model_path': g}, 'ground_truth.jsonl'),
    'model-path-nan-weights': (lambda t, g, s, n: {'--model_path': nan_weights(n)}, 'non-finite weights'),
    'wlm-weight-nan': (lambda t, g, s, n: {'--wlm_weight': 'nan'}, '--wlm_weight'),
    'bn-momentum-above-1': (lambda t, g, s, n: {'--bn_momentum': 5}, '--bn_momentum'),
}
REPORT_CASES = {
    'ground-truth-binary': (lambda t, g, s, n: {'--ground_truth': write(g, BINARY)}, 'binary file'),
    'scores-binary': (lambda t, g, s, n: {'--scores': write(s, BINARY)}, 'binary file'),
    'scores-garbage': (lambda t, g, s, n: {'--scores': write(s, 'abc\n')}, 'line 1 is not valid JSON'),
    'scores-not-objects': (lambda t, g, s, n: {'--scores': write(s, '[1]\n')}, 'not a JSON object'),
    'settings-beside-scores-garbage': (lambda t, g, s, n: {'--scores': write(s.with_name('settings.json'), '{').with_name(
        'scores.jsonl')}, 'not valid JSON'),
    'settings-beside-scores-binary': (lambda t, g, s, n: {'--scores': write(s.with_name('settings.json'), BINARY)
                                                          .with_name('scores.jsonl')}, 'binary file'),
    'out-is-a-file': (lambda t, g, s, n: {'--out': g}, '--out'),
    'out-is-a-supernet-run': (lambda t, g, s, n: {'--out': n}, 'stage-1 supernet run'),
    'out-is-a-scores-run': (lambda t, g, s, n: {'--out': write(t / 'sc' / 'settings.json', '{}').parent},
                            'proxy-study scores'),
}


def flags_of(case, tmp, sn, defaults):
    gt, sc, run = table_files(tmp, sn)
    flags = {**{k: v(gt, sc, run) for k, v in defaults.items()}, **case(tmp, gt, sc, run)}
    return [str(a) for kv in flags.items() for a in kv]


SCORES_DEFAULTS = {'--ground_truth': lambda g, s, n: g, '--model_path': lambda g, s, n: n / 'checkpoint_epoch_1.pth.tar',
                   '--metrics': lambda g, s, n: 'params', '--device': lambda g, s, n: 'cpu',
                   '--save': lambda g, s, n: g.parent.parent / 'new'}
REPORT_DEFAULTS = {'--ground_truth': lambda g, s, n: g, '--scores': lambda g, s, n: s,
                   '--out': lambda g, s, n: g.parent.parent / 'report', '--resamples': lambda g, s, n: 1000}


@pytest.mark.parametrize('name', SCORES_CASES)
def test_scores_refuses_bad_input_and_keeps_every_file(name, tiny_supernet, tmp_path, capsys):
    case, message = SCORES_CASES[name]
    argv = flags_of(case, tmp_path, tiny_supernet('darts'), SCORES_DEFAULTS)
    before = snapshot_dir(tmp_path)
    code = cli_exit_code(scores, argv)
    assert_refused(code, capsys.readouterr().err, message, before, kept(before, snapshot_dir(tmp_path)))


@pytest.mark.parametrize('name', REPORT_CASES)
def test_report_refuses_bad_input_and_keeps_every_file(name, tiny_supernet, tmp_path, capsys):
    case, message = REPORT_CASES[name]
    argv = flags_of(case, tmp_path, tiny_supernet('darts'), REPORT_DEFAULTS)
    before = snapshot_dir(tmp_path)
    code = cli_exit_code(report, argv)
    assert_refused(code, capsys.readouterr().err, message, before, kept(before, snapshot_dir(tmp_path)))


def test_scores_and_report_on_a_full_disk_end_with_one_line(tiny_supernet, tmp_path):
    """Files may grow to 700 bytes (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it fails as on a full disk)."""
    gt, sc, run = table_files(tmp_path, tiny_supernet('darts'))
    limit = "import resource, signal, runpy, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); " \
            "resource.setrlimit(resource.RLIMIT_FSIZE, (700, 700)); sys.argv = sys.argv[1:]; " \
            "runpy.run_path(sys.argv[0], run_name='__main__')"
    for script, flags in (('proxy_study/scores.py', ['--ground_truth', gt, '--model_path', run /
                                                     'checkpoint_epoch_1.pth.tar', '--metrics', 'params,macs',
                                                     '--scoring_seeds', 9, '--device', 'cpu', '--save',
                                                     tmp_path / 'new']),
                          ('proxy_study/report.py', ['--ground_truth', gt, '--scores', sc, '--out', tmp_path / 'rep',
                                                     '--resamples', 1000])):
        proc = subprocess.run([sys.executable, '-c', limit, str(ROOT / script), *map(str, flags)], cwd=ROOT,
                              capture_output=True, text=True)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
        assert proc.returncode == 2 and len(errors) == 1 and 'was not written' in errors[0], proc.stderr[-2000:]
    assert (tmp_path / 'new' / 'scores.jsonl').read_text().endswith('\n')
# --- ground truth: bad input, by kind: exit 2, one error line, every file of every run unchanged ----------------

def _gt(save, **changes):
    return lambda b: gt_argv(**changes) + ['--save', b / save]


def _other_protocol(b):
    """b/gt2: a ground truth recorded with another --epochs than GT's."""
    (b / 'gt2' / 'pairs').mkdir(parents=True)
    recorded = ground_truth.protocol_of(ground_truth.parse_args([str(a) for a in GT] + ['--save', str(b / 'gt2')]))
    (b / 'gt2' / 'protocol.json').write_text(json.dumps({**recorded, 'epochs': 5}))


# (id, argv given the copy b of foreign_runs, text of the one error line, prepare(b) or None)
GROUND_TRUTH_BAD_INPUTS = [
    # another kind of run directory: nothing of it may be rewritten
    ('--save a supernet run', _gt('supernet'), 'holds a stage-1 supernet run', None),
    ('--save a retrain run', _gt('retrain'), 'holds a stage-3 retraining run', None),
    ('--save a search run', _gt('search'), 'holds a stage-2 evolutionary search', None),
    ('--save is a file', _gt('afile'), 'is an existing file, not a directory', None),
    ('--save of another protocol', _gt('gt2'), 'holds ground truth trained with other flags', _other_protocol),
    # numbers out of range
    ('--subset_seed beyond 64 bits', _gt('out', subset_seed=2 ** 64), '--subset_seed must be >= 0 and <=', None),
    ('negative --sample_seed', _gt('out', sample_seed=-1), '--sample_seed must be >= 0', None),
    ('--init_channels of a million', _gt('out', init_channels=10 ** 6), 'do not fit in memory', None),
    ('--layers of a hundred thousand', _gt('out', layers=10 ** 5), '--layers must be >= 1 and <= 200', None),
    ('negative --weight_decay', _gt('out', weight_decay=-1e-4), '--weight_decay must be >= 0', None),
    ('--momentum 1', _gt('out', momentum=1), '--momentum must be >= 0 and < 1', None),
    ('--label_smooth 5', _gt('out', label_smooth=5), '--label_smooth must be >= 0 and < 1', None),
    ('--learning_rate nan', _gt('out', learning_rate='nan'), '--learning_rate must be > 0, got nan', None),
    ('negative --grad_clip', _gt('out', grad_clip=-5), '--grad_clip must be >= 0', None),
    ('negative --auxiliary_weight', _gt('out', auxiliary_weight=-0.4), '--auxiliary_weight must be >= 0', None),
    ('--drop_path_prob 1', _gt('out', drop_path_prob=1), '--drop_path_prob must be >= 0 and < 1', None),
    ('--batch_size 1', _gt('out', batch_size=1), '--batch_size must be >= 2', None),
    ('--report_freq 0', _gt('out', report_freq=0), '--report_freq must be >= 1', None),
    ('negative --train_subset', _gt('out', train_subset=-1), '--train_subset must be >= 0', None),
    ('negative --test_subset', _gt('out', test_subset=-1), '--test_subset must be >= 0', None),
    ('negative --cutout_length', _gt('out', cutout_length=-1), '--cutout_length must be >= 0', None),
    ('--seeds 0', _gt('out', seeds=0), '--seeds must be >= 1', None),
    ('--epochs 0', _gt('out', epochs=0), '--epochs must be >= 1', None),
]


@pytest.mark.parametrize('argv, message, prepare', [c[1:] for c in GROUND_TRUTH_BAD_INPUTS],
                         ids=[c[0] for c in GROUND_TRUTH_BAD_INPUTS])
def test_ground_truth_bad_input_is_refused_before_anything_is_written(foreign_runs, argv, message, prepare, tmp_path,
                                                                      capsys):
    code, before, after = refused_in_copy(ground_truth, foreign_runs, tmp_path, argv, prepare)
    assert_refused(code, capsys.readouterr().err, message, before, after)
