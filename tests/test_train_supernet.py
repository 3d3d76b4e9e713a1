"""Stage 1 through its CLI: exact resume, checkpoints, bad input, and real data."""
import json

import pytest
import torch

from conftest import cli_exit_code, kill_moments, log_lines, run_and_kill, run_script, slow_params, snapshot_dir
from train_supernet import heap, supernet_training, train
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


def test_heap_trimmer_trims_only_above_the_headroom(monkeypatch):
    trims = []
    trim = heap.HeapTrimmer(torch.device('cpu'), 0.2)
    always = heap.HeapTrimmer(torch.device('cpu'), 0.0)
    for t, headroom in ((trim, 0.2), (always, 0.0)):
        t.headroom = headroom     # the constructor disables it where glibc or /proc is missing
        t._trim = lambda pad: trims.append(pad)
    rss = iter([1000, 1100, 1250, 1150, 1300])          # RSS after steps 1..5; limit 1.2 x 1000
    monkeypatch.setattr(heap, 'resident_bytes', lambda: next(rss))
    for _ in range(5):
        trim()
    assert trim.limit == pytest.approx(1200) and trim.trims == len(trims) == 2       # at 1250 and 1300

    monkeypatch.setattr(heap, 'resident_bytes', lambda: 1000)
    for _ in range(3):
        always()
    assert always.trims == 3 and len(trims) == 5
    assert heap.HeapTrimmer(torch.device('meta'), 0.2).headroom < 0      # only CPUs: off elsewhere
    assert heap.HeapTrimmer(torch.device('cpu'), -1).headroom < 0


def test_resident_bytes_is_the_process_rss():
    if heap.resident_bytes() is None:
        pytest.skip('no /proc/self/statm on this system')
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 50 * 2**20 < heap.resident_bytes() <= peak + 2**20
