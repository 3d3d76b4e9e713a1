"""Stage 1 through its CLI: exact resume, checkpoints, bad input, and real data."""
import json
import os
import random
import shutil

import pytest
import torch

import checkpoints
import utils
from conftest import (TINY_SUPERNETS, assert_refused, check_refusal, cli_exit_code, error_lines, kill_moments,
                      log_lines, nonfinite_tensors, refusal_base, refused_in_copy, run_and_kill, run_script,
                      slow_params, snapshot_dir, stage_cli)
from spaces import get_space
from train_supernet import supernet_training, train
from spaces.darts_supernet import Network
from training import StepConfig
from utils import read_metrics

TINY = ['--dataset', 'synthetic', '--init_channels', 4, '--layers', 3, '--batch_size', 32, '--train_subset', 192,
        '--valid_subset', 64, '--valid_bn_images', 64, '--seed', 3, '--report_freq', 2]
VOLATILE = {'epoch_time', 'images_per_s'}


def _cli(argv, capsys):
    """Run the stage-1 CLI in-process; returns (exit status, stderr)."""
    return cli_exit_code(train, argv), capsys.readouterr().err


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    """An uninterrupted 3-epoch run (6 steps per epoch, a log line every 2)."""
    run = tmp_path_factory.mktemp('straight') / 'run'
    run_script('train_supernet/train.py', *TINY, '--epochs', 3, '--save', run)
    return run


# The flags of conftest's tiny darts supernet: a re-run or a resume of a copy of it is the same run.
SUPERNET = [*TINY_SUPERNETS['darts'], '--report_freq', 1]


@pytest.fixture(scope='module')
def bad_input_runs(tmp_path_factory, tiny_supernet):
    """A copy of the finished tiny supernet and a file where a directory is expected (conftest.refusal_base)."""
    return refusal_base(tmp_path_factory.mktemp('refusals'), supernet=tiny_supernet('darts'))


@pytest.fixture(scope='module')
def nb201_supernet(tiny_supernet):
    return tiny_supernet('nb201')


# --- NAS-Bench-201 supernets ----------------------------------------------------------------------------

def test_stage1_writes_an_nb201_supernet(nb201_supernet):
    ckpt = torch.load(nb201_supernet / 'checkpoint_epoch_1.pth.tar', weights_only=True)
    assert ckpt['space'] == 'nb201' and ckpt['layers'] == 1 and ckpt['init_channels'] == 4
    keys = ckpt['state_dict']
    assert 'cells.0.edges.5.ops.3.op.1.weight' in keys and 'cells.1.downsample.1.weight' in keys
    assert keys['classifier.weight'].shape == (10, 16)             # 4C channels at the head
    init = torch.load(nb201_supernet / 'checkpoint_epoch_0.pth.tar', weights_only=True)['state_dict']
    assert not torch.equal(init['stem.0.weight'], keys['stem.0.weight'])     # it trained


def test_layers_default_depends_on_the_space():
    assert train.parse_args(['--space', 'nb201']).layers == 5
    assert train.parse_args([]).layers == 8 and train.parse_args([]).space == 'darts'


# --- two processes (torchrun) --------------------------------------------------------------------------

def sampled_path_parameters(seed, steps, C, layers):
    """Names of the supernet parameters on the first `steps` paths stage 1 draws with --seed."""
    space, rng = get_space('darts'), random.Random(seed)
    net = space.build_supernet(C, 10, layers)
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[id(p)] for _ in range(steps) for p in net.path_parameters(space.random_candidate(rng))}


@pytest.mark.slow
def test_two_process_supernet_training(ddp_supernet):
    assert sorted(p.name for p in ddp_supernet.glob('*.pth.tar')) == [
        'checkpoint_epoch_0.pth.tar', 'checkpoint_epoch_1.pth.tar', 'last.pth.tar']
    log = (ddp_supernet / 'log.txt').read_text()
    assert log.count('epoch 1/1') == 1 and '2 process(es)' in log and 'global batch 32' in log
    recs = read_metrics(ddp_supernet / 'metrics.jsonl')
    assert len(recs) == 1 and recs[0]['epoch'] == 1
    ck = torch.load(ddp_supernet / 'checkpoint_epoch_1.pth.tar')
    assert not any(k.startswith('module.') for k in ck['state_dict'])     # saved from the unwrapped model
    # both ranks sampled the same paths: DDP gives a gradient to every parameter some rank used, so the
    # parameters that ever got one are exactly those of the 4 paths (128 images / 2 ranks / batch 16) that
    # random.Random(--seed) draws; a rank drawing other paths would add its ops' parameters
    last = torch.load(ddp_supernet / 'last.pth.tar')
    assert set(last['grad_mask']) == sampled_path_parameters(seed=1, steps=4, C=4, layers=3)



def shared_path_worker(rank, world_size, init_file, out):
    """Rank `rank` of a gloo group: three SPOS steps (in-place zero gradients, as stage 1 by default) from
    per-rank initial weights and batches, once through DDP(find_unused_parameters=True) and once through
    SharedPath's one all-reduce of the sampled path's gradients; saves what each left."""
    import torch.distributed as tdist
    from distributed import Dist
    from training import train_step
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size))
    tdist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    space, dist, ce = get_space('darts'), Dist(), torch.nn.CrossEntropyLoss()
    cfg, scaler = StepConfig(5.0, set_to_none=False), torch.amp.GradScaler('cpu', enabled=False)
    gen = torch.Generator().manual_seed(100 + rank)                  # each rank its own batches
    batches = [(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(3)]
    result = {}
    for mode in ('ddp', 'shared'):
        torch.manual_seed(10 + rank)                                 # each rank its own initial weights
        net = Network(4, 10, 3)
        opt = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
        rng = random.Random(5)                                       # the same paths on every rank
        if mode == 'ddp':
            model = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
            for x, y in batches:
                train_step(model, x, y, opt, scaler, ce, cfg, space.forward_args(space.random_candidate(rng)))
        else:
            dist.broadcast_module(net)
            path = supernet_training.SharedPath(net, rng, space, dist)
            for x, y in batches:
                train_step(net, x, y, opt, scaler, ce, cfg, path.forward_args(), path.average_gradients)
        result[mode] = {'params': {n: p.detach().clone() for n, p in net.named_parameters()},
                        'buffers': {n: b.clone() for n, b in net.named_buffers()},
                        'grads': sorted(n for n, p in net.named_parameters() if p.grad is not None)}
    torch.save(result, os.path.join(out, f'{rank}.pt'))
    tdist.destroy_process_group()


def test_shared_path_gradients_equal_ddp_with_unused_parameters(tmp_path):
    """Two gloo processes: SharedPath's all-reduce of the path's gradients leaves every rank with the weights,
    the gradient mask and (rank 0) the BN statistics that DDP(find_unused_parameters=True) gives, bit for bit."""
    import torch.multiprocessing as mp
    mp.spawn(shared_path_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'{r}.pt') for r in range(2)]
    for r, res in enumerate(ranks):
        ddp, shared = res['ddp'], res['shared']
        assert ddp['grads'] == shared['grads'] and 0 < len(ddp['grads']) < len(ddp['params'])
        assert all(torch.equal(ddp['params'][n], shared['params'][n]) for n in ddp['params']), r
    assert all(torch.equal(ranks[0]['shared']['params'][n], v) for n, v in ranks[1]['shared']['params'].items())
    assert all(torch.equal(ranks[0]['ddp']['buffers'][n], v) for n, v in ranks[0]['shared']['buffers'].items())
    untrained = Network(4, 10, 3)
    assert not torch.equal(untrained.stem[0].weight, ranks[0]['shared']['params']['stem.0.weight'])

# --- bad input, interrupted runs, a full disk ----------------------------------------------------------

# (id, argv given the fixture's base folder, text the one error line must hold)
REFUSALS = [
    ('--save is a file, stage 1', lambda b: SUPERNET + ['--epochs', 1, '--save', b / 'afile'],
     'is an existing file, not a directory'),
    ('stage-1 re-run over a finished run', lambda b: SUPERNET + ['--epochs', 2, '--save', b / 'supernet'],
     'already holds a run'),
    ('--resume of a missing run', lambda b: SUPERNET + ['--epochs', 2, '--resume', b / 'nothing'],
     'does not exist'),
    ('stage-1 resume of a finished run', lambda b: SUPERNET + ['--epochs', 1, '--resume', b / 'supernet'],
     'already finished 1 epochs; raise --epochs to train further'),
]


@pytest.mark.parametrize('argv, message', [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refused_with_one_line_and_nothing_changed(bad_input_runs, argv, message, capsys):
    check_refusal(train, bad_input_runs, argv(bad_input_runs), message, capsys)


def copy_run(src, dst, drop=()):
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_stage1_resume_under_another_world_size_is_refused_unless_asked(bad_input_runs, tmp_path, capsys):
    run = copy_run(bad_input_runs / 'supernet', tmp_path / 'run')
    last = torch.load(run / 'last.pth.tar', weights_only=True)
    assert last['world_size'] == 1
    last['world_size'] = 2                       # as if trained by two processes
    torch.save(last, run / 'last.pth.tar')
    before = snapshot_dir(run)
    code, err = stage_cli(train, SUPERNET + ['--epochs', 2, '--resume', run], capsys)
    assert code == 2 and len(error_lines(err)) == 1, err
    assert 'trained by 2 process(es) (global batch 64); this run has 1 (global batch 32)' in err
    assert '--allow_world_size_change' in err and snapshot_dir(run) == before
    code, err = stage_cli(train, SUPERNET + ['--epochs', 2, '--resume', run, '--allow_world_size_change'], capsys)
    assert code == 0 and 'WARNING: ' in err and 'continuing as --allow_world_size_change asks' in err


def test_stage1_killed_in_its_first_epoch_is_refused_then_restarts_exactly(bad_input_runs, tmp_path, capsys):
    """A kill after the epoch-1 metrics line but before last.pth.tar: a plain re-run is refused; --resume DIR
    starts over from checkpoint_epoch_0 and ends equal to the uninterrupted run, with one line per epoch."""
    run = copy_run(bad_input_runs / 'supernet', tmp_path / 'run', drop=['last.pth.tar'])
    before = snapshot_dir(run)
    code, err = stage_cli(train, SUPERNET + ['--epochs', 1, '--save', run], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and f'pass --resume {run} to start it over' in err
    assert snapshot_dir(run) == before
    code, err = stage_cli(train, SUPERNET + ['--epochs', 1, '--resume', run], capsys)
    assert code == 0, err
    assert [r['epoch'] for r in utils.read_metrics(run / 'metrics.jsonl')] == [1]
    a = torch.load(bad_input_runs / 'supernet' / 'last.pth.tar', weights_only=True)
    b = torch.load(run / 'last.pth.tar', weights_only=True)
    assert all(torch.equal(v, b['state_dict'][k]) for k, v in a['state_dict'].items())
    assert (run / 'checkpoint_epoch_0.pth.tar').read_bytes() == before['checkpoint_epoch_0.pth.tar']


def test_diverged_run_exits_2_and_saves_nothing_non_finite(tmp_path, capsys):
    run = tmp_path / 'run'
    code, err = stage_cli(train, SUPERNET + ['--epochs', 2, '--learning_rate', 1e6, '--save', run], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'became' in lines[0] and 'lower --learning_rate' in lines[0], err
    assert nonfinite_tensors(run) == 0
    named = [w.rstrip(',;') for w in lines[0].split() if w.startswith(str(tmp_path))]
    assert named and all(os.path.exists(p) for p in named), lines[0]


def test_stage1_checkpoint_on_a_full_disk(tmpfs, capsys):
    """Room for the initial weights and epoch 1's last.pth.tar, not for checkpoint_epoch_2: one line naming
    that file, no temporary file left, last.pth.tar still the good epoch-1 checkpoint."""
    run = tmpfs('3300k') / 'run'
    code, err = stage_cli(train, SUPERNET + ['--epochs', 2, '--save', run], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert f'{run / "checkpoint_epoch_2.pth.tar"} was not written: the disk is full' in lines[0]
    assert not list(run.glob('*.tmp')) and 'Traceback' not in err
    assert checkpoints.load_checkpoint(run / 'last.pth.tar')['epoch'] == 1


@pytest.mark.parametrize('moment', ['stop_after'] + slow_params(
    kill_moments(1, range(1, 3), range(3, 9))),
                         ids=lambda m: m if isinstance(m, str) else f'kill-9-after-log-line-{m}')
def test_resume_is_bit_identical(straight, moment, tmp_path):
    """--stop_after 1, or kill -9 after the moment-th training log line (the first in epoch 1), then the
    README's resume command: equal to the uninterrupted run bit for bit."""
    split = tmp_path / 'split'
    if moment == 'stop_after':
        run_script('train_supernet/train.py', *TINY, '--epochs', 3, '--save', split, '--stop_after', 1)
        assert json.loads((split / 'metrics.jsonl').read_text().splitlines()[-1])['epoch'] == 1
        killed = True
    else:
        killed = run_and_kill('train_supernet/train.py', *TINY, '--epochs', 3, '--save', split,
                              reached=lambda: log_lines(split / 'log.txt', 'train epoch') >= moment)
    if killed:
        run_script('train_supernet/train.py', *TINY, '--epochs', 3, '--resume', split)

    a, b = torch.load(straight / 'last.pth.tar'), torch.load(split / 'last.pth.tar')
    assert a['epoch'] == b['epoch'] == 3
    for k, v in a['state_dict'].items():
        assert torch.equal(v, b['state_dict'][k]), k
    for k, v in a['optimizer']['state'].items():
        assert torch.equal(v['momentum_buffer'], b['optimizer']['state'][k]['momentum_buffer'])
    for name in ('checkpoint_epoch_0.pth.tar', 'checkpoint_epoch_3.pth.tar'):
        a, b = torch.load(straight / name), torch.load(split / name)
        assert all(torch.equal(v, b['state_dict'][k]) for k, v in a['state_dict'].items()), name
    strip = lambda recs: [{k: v for k, v in r.items() if k not in VOLATILE} for r in recs]   # noqa: E731
    assert strip(read_metrics(straight / 'metrics.jsonl')) == strip(read_metrics(split / 'metrics.jsonl'))
    assert len(read_metrics(straight / 'metrics.jsonl')) == 3


def test_checkpoints_layout_and_initial_weights(straight):
    run = straight                                   # the uninterrupted 3-epoch run: --save_freq 5 keeps 0 and 3
    files = {p.name for p in run.iterdir()}
    assert not {'checkpoint_epoch_1.pth.tar', 'checkpoint_epoch_2.pth.tar'} & files
    assert {'checkpoint_epoch_0.pth.tar', 'checkpoint_epoch_3.pth.tar', 'last.pth.tar', 'split.json', 'log.txt',
            'args.json', 'metrics.jsonl', 'tb'} <= files
    init, final = torch.load(run / 'checkpoint_epoch_0.pth.tar'), torch.load(run / 'checkpoint_epoch_3.pth.tar')
    assert init['epoch'] == 0 and final['epoch'] == 3 and {'state_dict', 'optimizer'} <= set(final)
    # the initial checkpoint is the seeded initialization, before any step
    torch.manual_seed(3)
    fresh = Network(4, 10, 3)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, init['state_dict'][k]), k
    assert not torch.equal(init['state_dict']['stem.0.weight'], final['state_dict']['stem.0.weight'])
    # reference-style loading: strict, from the plain state_dict
    Network(final['init_channels'], final['num_classes'], final['layers']).load_state_dict(final['state_dict'])
    recs = read_metrics(run / 'metrics.jsonl')
    assert [r['epoch'] for r in recs] == [1, 2, 3] and 0 <= recs[-1]['valid_acc'] <= 1
    assert recs[2]['lr'] < recs[1]['lr'] < recs[0]['lr'] == 0.025


def test_inplace_zeroing_keeps_decaying_unsampled_ops(tmp_path):
    """PyTorch 1.7 semantics: an op sampled once keeps getting weight decay after it leaves the path."""
    results = {}
    for mode, extra in (('inplace', []), ('none', []), ('low_memory', ['--low_memory'])):
        run = tmp_path / mode
        zero = 'none' if mode == 'none' else 'inplace'
        args = train.parse_args([str(a) for a in TINY] + ['--epochs', '1', '--zero_grad', zero, '--save', str(run)] + extra)
        train.main(args)
        results[mode] = torch.load(run / 'last.pth.tar')
    for k, v in results['inplace']['state_dict'].items():      # --low_memory changes memory, not results
        assert torch.equal(v, results['low_memory']['state_dict'][k]), k
    # with set_to_none only the last step's path holds gradients; in place, every op ever sampled does
    assert set(results['none']['grad_mask']) < set(results['inplace']['grad_mask'])
    a, b = results['inplace']['state_dict'], results['none']['state_dict']
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith('weight'))


@pytest.mark.parametrize('argv, message', [
    (['--epochs', 0], '--epochs must be >= 1'),
    (['--dataset', 'mnist'], "invalid choice: 'mnist'"),
    (['--dataset', 'fashion-mnist', '--data', '/nonexistent/fmnist'], 'not found in /nonexistent/fmnist'),
    (['--dataset', 'cifar10', '--data', '/nonexistent/cifar'], 'CIFAR-10 not found'),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    code, err = _cli(argv + ['--save', tmp_path / 'run'], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / 'run').exists()


def test_resume_of_another_shape_and_existing_run_overwrite_nothing(tmp_path, capsys):
    run = tmp_path / 'run'
    assert _cli(TINY + ['--epochs', 1, '--save', run], capsys)[0] == 0
    before = snapshot_dir(run)
    code, err = _cli(TINY + ['--epochs', 2, '--init_channels', 8, '--resume', run / 'last.pth.tar'], capsys)
    assert code == 2 and 'shape mismatches' in err and 'checkpoint (' in err and len(err.strip().splitlines()) == 1
    code, err = _cli(TINY + ['--epochs', 2, '--save', run], capsys)
    assert code == 2 and 'already holds a run' in err
    code, err = _cli(TINY + ['--epochs', 2, '--resume', run / 'checkpoint_epoch_0.pth.tar'], capsys)
    assert code == 2 and 'not a resumable' in err
    assert snapshot_dir(run) == before


@pytest.mark.slow
def test_fashion_mnist_supernet_beats_chance(readme_runs):
    """The README's offline stage-1 command (a few thousand images, C=8, 5 layers, 2 epochs)."""
    sandbox, _ = readme_runs
    recs = read_metrics(sandbox / 'runs' / 'supernet-fmnist' / 'metrics.jsonl')
    assert [r['epoch'] for r in recs] == [1, 2]
    assert recs[-1]['valid_acc'] > 0.5, recs
    assert recs[-1]['train_loss'] < recs[0]['train_loss']


def test_runs_from_its_own_folder_as_the_reference_documents(tmp_path):
    from conftest import ROOT
    run_script('train_supernet/train.py', *TINY, '--epochs', 1, '--save', tmp_path / 'run', cwd=ROOT / 'train_supernet')
    assert (tmp_path / 'run' / 'checkpoint_epoch_1.pth.tar').exists()


def test_fast_paths_give_the_same_first_step_loss():
    """channels_last and the shared-ReLU / skipped-none forward change speed, not the first loss."""
    import copy
    import genotypes
    torch.manual_seed(0)
    base = Network(4, 10, 3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    cand = genotypes.encode(genotypes.DARTS_V2)
    losses = []
    for channels_last in (False, True):
        net = copy.deepcopy(base)
        if channels_last:
            net, xx = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        else:
            xx = x
        opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
        scaler = torch.amp.GradScaler('cpu', enabled=False)
        _, loss = supernet_training.supernet_step(net, xx, y, cand, opt, scaler, torch.nn.CrossEntropyLoss(),
                                                  StepConfig(5.0, set_to_none=False))
        losses.append(loss.item())
    ref = torch.nn.functional.cross_entropy(copy.deepcopy(base).forward_reference(x, cand[:14], cand[14:]), y)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] == pytest.approx(ref.item(), rel=1e-6)


def test_diverging_loss_exits_2_with_the_fix(tmp_path, capsys):
    code, err = _cli(TINY + ['--epochs', 1, '--learning_rate', 1e30, '--save', tmp_path / 'run'], capsys)
    last = err.strip().splitlines()[-1]                              # after the run's own log lines
    assert code == 2 and last.startswith('error: training loss became'), err
    # no epoch finished, so there is no last.pth.tar to name: the hint restarts the run from its beginning
    assert 'lower --learning_rate' in last and f'--resume {tmp_path / "run"} (no epoch was saved yet' in last


# --- bad input, by kind: exit 2, one error line, every file of every run unchanged ------------------------------

S1 = [str(a) for a in TINY_SUPERNETS['darts']]       # the shape of foreign_runs' supernet


def _run_with_last(make):
    """prepare(b): b/run is a copy of the supernet run whose last.pth.tar is replaced by make(b, checkpoint)."""
    def prepare(b):
        shutil.copytree(b / 'supernet', b / 'run')
        last = b / 'run' / 'last.pth.tar'
        ckpt = torch.load(last, weights_only=True)
        last.unlink()
        make(last, ckpt)
    return prepare


def _dropped(key):
    return _run_with_last(lambda path, ckpt: torch.save({k: v for k, v in ckpt.items() if k != key}, path))


def _split_file(train, valid):
    return lambda b: (b / 'split.json').write_text(json.dumps({'train': ['int', [str(i) for i in train]],
                                                               'valid': ['int', [str(i) for i in valid]]}))


def _resume(name, *extra):
    return lambda b: S1 + ['--epochs', 2, '--resume', b / name, *extra]


def _fresh(*extra):
    return lambda b: S1 + ['--save', b / 'out', *extra]


# (id, argv given the copy b of foreign_runs, text of the one error line, prepare(b) or None)
STAGE1_BAD_INPUTS = [
    # another kind of run directory, or a folder where last.pth.tar belongs: nothing of it may be rewritten
    ('resume a search run', _resume('search'), 'holds a stage-2 evolutionary search', None),
    ('resume a retrain run', _resume('retrain'), 'holds a stage-3 retraining run', None),
    ('resume a ground truth', _resume('gt'), 'holds proxy-study ground truth', None),
    ('fresh run into a retrain run', lambda b: S1 + ['--save', b / 'retrain'], 'holds a stage-3 retraining run', None),
    ('last.pth.tar is a directory', _resume('run'), 'is a directory',
     _run_with_last(lambda path, ckpt: path.mkdir())),
    ('--save is a file', lambda b: S1 + ['--save', b / 'afile'], 'is an existing file, not a directory', None),
    # checkpoints of the wrong content
    ('last.pth.tar is text', _resume('run'), 'cannot load checkpoint',
     _run_with_last(lambda path, ckpt: path.write_text('not a checkpoint\n'))),
    ('last.pth.tar is a list', _resume('run'), 'holds a list, not a dict',
     _run_with_last(lambda path, ckpt: torch.save([1, 2], path))),
    ('last.pth.tar is an int', _resume('run'), 'holds a int, not a dict',
     _run_with_last(lambda path, ckpt: torch.save(3, path))),
    ('last.pth.tar without rng', _resume('run'), "has no 'rng' entry", _dropped('rng')),
    ('last.pth.tar without path_rng', _resume('run'), "has no 'path_rng' entry", _dropped('path_rng')),
    ('last.pth.tar without optimizer', _resume('run'), "has no 'optimizer' entry", _dropped('optimizer')),
    ('last.pth.tar with a string epoch', _resume('run'), "its 'epoch' entry is a str",
     _run_with_last(lambda path, ckpt: torch.save({**ckpt, 'epoch': '1'}, path))),
    ('resume a stage-3 checkpoint', lambda b: S1 + ['--epochs', 2, '--resume', b / 'retrain' / 'checkpoint.pth.tar',
                                                    '--save', b / 'out'], "has no 'path_rng' entry", None),
    ('resume the initial checkpoint', _resume('supernet/checkpoint_epoch_0.pth.tar'), "has no 'scheduler' entry", None),
    ('resume a text file', lambda b: S1 + ['--epochs', 2, '--resume', b / 'text.pth.tar', '--save', b / 'out'],
     'cannot load checkpoint', None),
    # numbers out of range
    ('--seed beyond 64 bits', _fresh('--seed', 2 ** 64), '--seed must be >= 0 and <= 9223372036854775807', None),
    ('negative --seed', _fresh('--seed', -1), '--seed must be >= 0', None),
    ('--split_seed beyond 64 bits', _fresh('--split_seed', 2 ** 64), '--split_seed must be >= 0 and <=', None),
    ('negative --split_seed', _fresh('--split_seed', -3), '--split_seed must be >= 0', None),
    ('--init_channels of a million', _fresh('--init_channels', 10 ** 6), 'do not fit in memory', None),
    ('negative --init_channels', _fresh('--init_channels', -4), '--init_channels must be >= 1', None),
    ('--layers of a hundred thousand', _fresh('--layers', 10 ** 5), '--layers must be >= 1 and <= 200', None),
    ('negative --weight_decay', _fresh('--weight_decay', -1e-4), '--weight_decay must be >= 0', None),
    ('negative --momentum', _fresh('--momentum', -0.9), '--momentum must be >= 0 and < 1', None),
    ('--momentum 1', _fresh('--momentum', 1), '--momentum must be >= 0 and < 1', None),
    ('--learning_rate nan', _fresh('--learning_rate', 'nan'), '--learning_rate must be > 0, got nan', None),
    ('--learning_rate inf', _fresh('--learning_rate', 'inf'), '--learning_rate must be > 0, got inf', None),
    ('--learning_rate 0', _fresh('--learning_rate', 0), '--learning_rate must be > 0', None),
    ('negative --learning_rate_min', _fresh('--learning_rate_min', -1), '--learning_rate_min must be >= 0', None),
    ('negative --grad_clip', _fresh('--grad_clip', -5), '--grad_clip must be >= 0', None),
    ('--grad_clip nan', _fresh('--grad_clip', 'nan'), '--grad_clip must be >= 0', None),
    ('--batch_size 1', _fresh('--batch_size', 1), '--batch_size must be >= 2', None),
    ('--report_freq 0', _fresh('--report_freq', 0), '--report_freq must be >= 1', None),
    ('negative --valid_bn_images', _fresh('--valid_bn_images', -1), '--valid_bn_images must be >= 0', None),
    ('negative --stop_after', _fresh('--stop_after', -1), '--stop_after must be >= 0', None),
    ('negative --train_subset', _fresh('--train_subset', -1), '--train_subset must be >= 0', None),
    ('negative --valid_subset', _fresh('--valid_subset', -1), '--valid_subset must be >= 0', None),
    ('--epochs 0', _fresh('--epochs', 0), '--epochs must be >= 1', None),
    # splits with an empty part
    ('--train_portion 0.0001', _fresh('--train_portion', 0.0001), 'leaves the train part', None),
    ('--train_portion 0.9999', _fresh('--train_portion', 0.9999), 'leaves the valid part', None),
    ('split file without train indices', lambda b: S1 + ['--split_file', b / 'split.json', '--save', b / 'out'],
     'leaves the train part', _split_file([], range(10))),
    ('split file without valid indices', lambda b: S1 + ['--split_file', b / 'split.json', '--save', b / 'out'],
     'leaves the valid part', _split_file(range(10), [])),
]


@pytest.mark.parametrize('argv, message, prepare', [c[1:] for c in STAGE1_BAD_INPUTS],
                         ids=[c[0] for c in STAGE1_BAD_INPUTS])
def test_bad_input_is_refused_before_anything_is_written(foreign_runs, argv, message, prepare, tmp_path, capsys):
    code, before, after = refused_in_copy(train, foreign_runs, tmp_path, argv, prepare)
    assert_refused(code, capsys.readouterr().err, message, before, after)
