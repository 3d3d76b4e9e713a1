"""Stage 3: the networks, the schedule, the CLI (resume, torchrun, --evaluate, bad input), real data."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import genotypes as G
from conftest import (ROOT, TINY_RETRAIN, assert_refused, check_refusal, cli_exit_code, error_lines, kill_moments,
                      log_lines, nonfinite_tensors, refusal_base, refused_in_copy, run_and_kill, run_script,
                      slow_params, snapshot_dir, stage_cli)
from retrain import retrain, retraining
from train_supernet import train
from spaces.darts_network import NetworkCIFAR, NetworkImageNet, drop_path
from retrain.drawing import cell_dot, plot_genotype
from counting import count_macs, count_parameters
from training import StepConfig, train_step
from utils import read_metrics

TINY = ['--dataset', 'synthetic', '--arch', 'DARTS_V2', '--init_channels', 8, '--layers', 3, '--batch_size', 32,
        '--learning_rate', 0.05, '--train_subset', 256, '--test_subset', 128, '--report_freq', 4, '--seed', 1,
        '--drop_path_prob', 0.2]


@pytest.fixture(scope='module')
def bad_input_runs(tmp_path_factory):
    """A finished stage-3 run and a file where a directory is expected (conftest.refusal_base)."""
    return refusal_base(tmp_path_factory.mktemp('refusals'), retrain=True)


# the runs of the reference-checkpoint resume test below (C=8, 64 images); each gives its own --epochs
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


# --- bad input ------------------------------------------------------------------------------------------

# (id, argv given the fixture's base folder, text the one error line must hold)
REFUSALS = [
    ('binary --arch stage 3', lambda b: TINY_RETRAIN + ['--arch', b / 'retrain' / 'checkpoint.pth.tar',
                                                   '--save', b / 'out'], 'not a genotype JSON'),
    ('--save is a file, stage 3', lambda b: TINY_RETRAIN + ['--save', b / 'afile'],
     'is an existing file, not a directory'),
    ('negative --auxiliary_weight', lambda b: TINY_RETRAIN + ['--auxiliary_weight', -0.4, '--save', b / 'out'],
     '--auxiliary_weight must be >= 0'),
    ('--evaluate a directory', lambda b: TINY_RETRAIN + ['--evaluate', b / 'retrain'],
     'e.g. {b}/retrain/model_best.pth.tar'),
    ('stage-3 resume with another --arch', lambda b: TINY_RETRAIN + [
        '--arch', 'PDARTS', '--epochs', 2, '--resume', b / 'retrain'], 'was trained with --arch DARTS_V2, not PDARTS'),
    ('stage-3 re-run over a finished run', lambda b: TINY_RETRAIN + ['--save', b / 'retrain'],
     'already holds a run'),
    ('stage-3 resume of a finished run', lambda b: TINY_RETRAIN + ['--resume', b / 'retrain'],
     'already finished 1 epochs; raise --epochs to train further'),
]


@pytest.mark.parametrize('argv, message', [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refused_with_one_line_and_nothing_changed(bad_input_runs, argv, message, capsys):
    check_refusal(retrain, bad_input_runs, argv(bad_input_runs), message, capsys)


def test_diverged_run_exits_2_and_saves_nothing_non_finite(tmp_path, capsys):
    run = tmp_path / 'run'
    code, err = stage_cli(retrain, TINY_RETRAIN + ['--epochs', 2, '--learning_rate', 1e5, '--save', run], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'became' in lines[0] and 'lower --learning_rate' in lines[0], err
    assert nonfinite_tensors(run) == 0
    named = [w.rstrip(',;') for w in lines[0].split() if w.startswith(str(tmp_path))]
    assert named and all(os.path.exists(p) for p in named), lines[0]


def test_save_on_a_read_only_file_system(tmpfs, capsys):
    ro = tmpfs('64k', ro=True)
    code, err = stage_cli(retrain, TINY_RETRAIN + ['--save', ro / 'run'], capsys)
    assert code == 2 and error_lines(err) == [
        f'error: cannot create the run directory {ro / "run"} (Read-only file system); choose a writable --save '
        'directory'], err


@pytest.mark.parametrize('name, C, params, macs', [
    ('GENAS_FLATNESS_CIFAR100', 46, 5_195_205, 579.5e6),
    ('GENAS_ANGLE_FLATNESS_CIFAR100', 48, 5_413_696, 602.4e6),
    ('GENAS_FLATNESS_CIFAR10', 52, 5_564_090, 610.1e6),
    ('GENAS_ANGLE_FLATNESS_CIFAR10', 44, 5_344_118, 592.9e6),
    ('DARTS_V2', 48, 4_718_752, 529.9e6),
])
def test_imagenet_params_and_multiply_adds(name, C, params, macs):
    net = NetworkImageNet(C, 1000, 14, True, G.get_genotype(name))
    assert count_parameters(net) == params
    assert count_macs(net, torch.zeros(1, 3, 224, 224)) == pytest.approx(macs, rel=0.005)


@pytest.mark.parametrize('name', sorted(G.GENOTYPES))
def test_every_named_genotype_builds_both_networks(name):
    torch.manual_seed(0)
    g = G.GENOTYPES[name]
    for net, size in ((NetworkCIFAR(8, 10, 3, True, g), 32), (NetworkImageNet(8, 7, 3, True, g), 224)):
        n_cls = net.classifier.out_features
        net.train()
        logits, aux = net(torch.randn(2, 3, size, size))
        assert logits.shape == (2, n_cls) and aux.shape == (2, n_cls)
        net.eval()
        logits, aux = net(torch.randn(2, 3, size, size))
        assert logits.shape == (2, n_cls) and aux is None


def test_state_dict_names_follow_the_reference():
    keys = set(NetworkImageNet(16, 10, 14, True, G.DARTS_V2).state_dict())
    assert {'stem0.0.weight', 'stem0.4.running_var', 'stem1.1.weight', 'cells.0.preprocess0.conv_1.weight',
            'cells.1.preprocess0.op.1.weight', 'cells.0._ops.0.op.1.weight', 'auxiliary_head.features.2.weight',
            'auxiliary_head.features.3.running_mean', 'auxiliary_head.features.5.weight',
            'auxiliary_head.classifier.weight', 'classifier.bias'} <= keys
    assert not any(k.startswith('auxiliary_head.features.6') for k in keys)       # no BN after the 2x2 conv
    cifar = set(NetworkCIFAR(16, 10, 8, True, G.DARTS_V2).state_dict())
    assert {'stem.0.weight', 'auxiliary_head.features.6.running_var'} <= cifar


@pytest.mark.parametrize('fmt', [torch.channels_last, torch.contiguous_format])
def test_drop_path_is_the_reference_formula_bit_for_bit(fmt):
    """x / keep * mask and its gradient, every bit (the signs of the zeros too), from the same random stream."""
    x = torch.randn(64, 3, 4, 6).contiguous(memory_format=fmt)
    inf, nan = float('inf'), float('nan')
    x[:, 0, 0, :6] = torch.tensor([0.0, -0.0, inf, -inf, nan, 1e-45])      # in kept and in dropped samples
    x[:, 1] *= 1e37                     # large, while x / keep stays finite (past that the reference's zeros are NaN)
    g = torch.randn(x.shape).contiguous(memory_format=fmt)
    g[:, 0, 1, :3] = torch.tensor([-0.0, -inf, nan])
    outs = []
    for fn in (drop_path, lambda t, p: t.div(1 - p) * torch.empty(64, 1, 1, 1).bernoulli_(1 - p)):
        torch.manual_seed(3)
        t = x.clone().requires_grad_()
        y = fn(t, 0.3)
        (grad,) = torch.autograd.grad(y, t, g)
        outs.append((y.detach(), grad))
    (y, grad), (y_ref, grad_ref) = outs
    assert 0 < int((y_ref[:, 2].flatten(1) == 0).all(1).sum()) < 64     # some samples dropped, not all
    for got, want in ((y, y_ref), (grad, grad_ref)):
        assert torch.equal(got.contiguous().view(torch.int32), want.contiguous().view(torch.int32))
        assert got.is_contiguous(memory_format=fmt)


def test_drop_path():
    torch.manual_seed(0)
    x = torch.randn(1000, 2, 3, 3)
    assert torch.equal(drop_path(x, 0.0), x)
    y = drop_path(x, 0.5)
    kept = (y.flatten(1) != 0).any(1)
    assert 400 < int(kept.sum()) < 600
    assert torch.allclose(y[kept], 2 * x[kept])
    net = NetworkCIFAR(8, 10, 3, False, G.DARTS_V2)
    inp = torch.randn(4, 3, 32, 32)
    net.drop_path_prob = 0.0
    torch.manual_seed(1)
    a = net(inp)[0]
    torch.manual_seed(2)
    assert torch.equal(net(inp)[0], a)                  # p = 0: no randomness at all, even in train mode
    net.eval()
    ref = net(inp)[0]
    net.drop_path_prob = 0.9
    assert torch.equal(net(inp)[0], ref)                # eval: nothing dropped


def test_lr_schedules_by_hand():
    lin = retraining.lr_factor(argparse.Namespace(epochs=10, warmup_epochs=5, lr_scheduler='linear'))
    # (E - 5 - e) / (E - 5) while E - e > 5, else (E - e) / ((E - 5) * 5); warm-up x (e + 1) / 5
    assert [round(lin(e), 6) for e in range(10)] == [1.0 * 1 / 5, 0.8 * 2 / 5, 0.6 * 3 / 5, 0.4 * 4 / 5, 0.2,
                                                     0.2, 0.16, 0.12, 0.08, 0.04]
    cos = retraining.lr_factor(argparse.Namespace(epochs=10, warmup_epochs=0, lr_scheduler='cosine'))
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)


def test_cell_drawings(tmp_path):
    text = cell_dot(G.DARTS_V2.normal, G.DARTS_V2.normal_concat, 'normal')
    # 8 op edges, 4 into the output, 3 invisible ones keeping the nodes 0 < 1 < 2 < 3 in order
    assert text.count(' -> ') == 8 + 4 + 3 and text.count('style=invis') == 3
    assert '"c_{k-2}" -> "0" [label="sep_conv_3x3"' in text
    written = plot_genotype(G.NASNet, tmp_path / 'nasnet')
    reduce_dot = written['reduce'][0].read_text()
    assert reduce_dot.count(' -> ') - reduce_dot.count('style=invis') == 10 + 3
    if shutil.which('dot'):
        png = [p for p in written['normal'] if p.suffix == '.png'][0]
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    proc = run_script('retrain/visualize.py', '--arch', 'DARTS_V2', '--out', tmp_path / 'darts')
    assert (tmp_path / 'darts_normal.dot').exists() and 'darts_reduce.dot' in proc.stdout


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    """An uninterrupted 2-epoch run (8 steps per epoch, a log line every step)."""
    run = tmp_path_factory.mktemp('straight') / 'run'
    run_script('retrain/retrain.py', *TINY, '--epochs', 2, '--report_freq', 1, '--save', run)
    return run


@pytest.mark.parametrize('moment', ['stop_after'] + slow_params(
    kill_moments(3, range(1, 8), range(8, 16))),
                         ids=lambda m: m if isinstance(m, str) else f'kill-9-after-log-line-{m}')
def test_resume_is_bit_identical(straight, moment, tmp_path):
    """--stop_after 1, or kill -9 after the moment-th training log line (the first inside epoch 1), then the
    README's resume command: checkpoints and metrics equal to the uninterrupted run bit for bit."""
    split = tmp_path / 'split'
    argv = [*TINY, '--epochs', 2, '--report_freq', 1]
    if moment == 'stop_after':
        run_script('retrain/retrain.py', *argv, '--save', split, '--stop_after', 1)
        assert len(read_metrics(split / 'metrics.jsonl')) == 1
        killed = True
    else:
        killed = run_and_kill('retrain/retrain.py', *argv, '--save', split,
                              reached=lambda: log_lines(split / 'log.txt', 'train epoch') >= moment)
    if killed:
        run_script('retrain/retrain.py', *argv, '--resume', split)
    for name in ('checkpoint.pth.tar', 'model_best.pth.tar'):
        a, b = torch.load(straight / name), torch.load(split / name)
        assert a['epoch'] == b['epoch'] and a['best_acc_top1'] == b['best_acc_top1'], name
        for k, v in a['state_dict'].items():
            assert torch.equal(v, b['state_dict'][k]), (name, k)
    a = torch.load(straight / 'checkpoint.pth.tar')
    assert a['epoch'] == 2
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ('epoch_time', 'images_per_s')} for r in rs]  # noqa
    assert strip(read_metrics(straight / 'metrics.jsonl')) == strip(read_metrics(split / 'metrics.jsonl'))
    assert {'optimizer', 'scheduler', 'scaler', 'best_acc_top1', 'rng', 'args'} <= set(a)
    assert (straight / 'model_best.pth.tar').exists() and (straight / 'cell_normal.dot').exists()


def test_evaluate_reference_style_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    net = NetworkCIFAR(8, 10, 3, True, G.DARTS_V2)
    torch.save({'epoch': 250, 'best_acc_top1': torch.tensor(0.5), 'optimizer': {},
                'state_dict': {f'module.{k}': v for k, v in net.state_dict().items()}}, tmp_path / 'ref.pth.tar')
    code = _cli(TINY + ['--auxiliary', '--evaluate', tmp_path / 'ref.pth.tar', '--save', tmp_path / 'r'])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result['val_images'] == 128 and 0 <= result['val_top1'] <= result['val_top5'] <= 1
    assert not (tmp_path / 'r').exists()                   # evaluation writes nothing


def _cli(argv):
    return cli_exit_code(retrain, argv)


def test_bad_input_exits_2_and_overwrites_nothing(tmp_path, capsys):
    run = tmp_path / 'run'
    assert _cli(TINY + ['--epochs', 1, '--save', run]) == 0
    capsys.readouterr()
    before = snapshot_dir(run)
    (tmp_path / 'bad.json').write_text('{"genotype": {"normal": 3}}')
    (tmp_path / 'imagenet' / 'train').mkdir(parents=True)
    cases = [
        (TINY + ['--arch', 'NO_SUCH_CELL', '--save', run], "unknown genotype 'NO_SUCH_CELL'; known names"),
        (TINY + ['--arch', tmp_path / 'bad.json', '--save', run], 'genotype file'),
        (['--dataset', 'imagenet', '--data_root', tmp_path / 'imagenet', '--save', run], 'missing'),
        (TINY + ['--epochs', 2, '--init_channels', 16, '--resume', run], 'shape mismatches'),
        (TINY + ['--epochs', 2, '--save', run], 'already holds a run'),
        (TINY + ['--layers', 1, '--save', run], '--layers must be >= 3'),
    ]
    for argv, message in cases:
        assert _cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert snapshot_dir(run) == before


def test_diverging_loss_exits_2_with_the_fix(tmp_path, capsys):
    assert _cli(TINY + ['--epochs', 1, '--learning_rate', 1e30, '--save', tmp_path / 'run']) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]          # after the run's own log lines
    assert last.startswith('error: training loss became') and 'lower --learning_rate' in last


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process_evaluate(fmnist, tmp_path):
    run = tmp_path / 'ddp'
    args = ['--dataset', 'fashion-mnist', '--arch', 'DARTS_V2', '--init_channels', 8, '--layers', 3,
            '--batch_size', 64, '--learning_rate', 0.05, '--train_subset', 1024, '--test_subset', 500,
            '--epochs', 1, '--report_freq', 1000, '--device', 'cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(ROOT / 'retrain' / 'retrain.py'), *map(str, args), '--save', str(run)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / 'log.txt').read_text()
    assert log.count('epoch 1/1') == 1 and '2 process(es)' in log and 'global batch 64 (32 per process)' in log
    recs = read_metrics(run / 'metrics.jsonl')
    assert len(recs) == 1 and recs[0]['val_images'] == 500 and recs[0]['train_images'] == 1024
    assert sorted(p.name for p in run.glob('*.pth.tar')) == ['checkpoint.pth.tar', 'model_best.pth.tar']
    single = run_script('retrain/retrain.py', *args, '--evaluate', run / 'checkpoint.pth.tar')
    result = json.loads(single.stdout.strip().splitlines()[-1])
    assert result['val_top1'] == recs[0]['val_top1'] and result['val_images'] == 500
    assert result['val_loss'] == pytest.approx(recs[0]['val_loss'], rel=1e-5)


@pytest.mark.slow
def test_fashion_mnist_retrain_of_the_searched_cell(readme_runs):
    """The README's offline chain: stage 1 -> wlm search -> retraining of the found cell -> --evaluate."""
    sandbox, results = readme_runs
    run = sandbox / 'runs' / 'retrain-fmnist'
    recs = read_metrics(run / 'metrics.jsonl')
    assert recs[-1]['val_top1'] > 0.7, recs
    searched = G.load_genotype(sandbox / 'runs' / 'search-fmnist-wlm' / 'genotype.json')
    assert G.genotype_from_dict(torch.load(run / 'checkpoint.pth.tar')['genotype']) == searched
    block = next(proc for _, body, proc in results if '--evaluate runs/retrain-fmnist' in body)
    evaluated = json.loads(block.stdout.strip().splitlines()[-1])
    assert evaluated['val_top1'] == recs[-1]['val_top1'] and evaluated['val_images'] == 2000


def test_channels_last_gives_the_same_first_step_loss():
    import copy
    torch.manual_seed(0)
    base = NetworkCIFAR(8, 10, 3, True, G.GENAS_FLATNESS_CIFAR10)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    cfg = StepConfig(grad_clip=5.0, amp=False, auxiliary_weight=0.4)
    losses = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        net = copy.deepcopy(base).to(memory_format=fmt)
        opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
        scaler = torch.amp.GradScaler('cpu', enabled=False)
        _, loss = train_step(net, x.contiguous(memory_format=fmt), y, opt, scaler, torch.nn.CrossEntropyLoss(), cfg)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def _eager_compile(monkeypatch):
    """torch.compile traced by dynamo but run without code generation (seconds instead of minutes on a CPU):
    enough to check what --compile wires (graphs, recompiles, state dict keys), not inductor's numbers."""
    import functools
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='eager'))
    torch._dynamo.reset()


def test_compiled_drop_path_compiles_once_for_every_probability(monkeypatch):
    """The drop-path probability grows every epoch: it must stay an input of the compiled graph, not a
    constant (one recompile per epoch, then eager fallback after 8). p = 0 and p > 0 are two graphs."""
    from torch._dynamo.utils import counters
    _eager_compile(monkeypatch)

    class Dropper(torch.nn.Module):
        drop_path_prob = 0.0

        def forward(self, x):
            return drop_path(x, self.drop_path_prob) if self.drop_path_prob > 0 else x

    m = Dropper()
    compiled = torch.compile(m)
    x = torch.randn(4000, 2, 1, 1)
    counters.clear()
    for p in (0.0, 0.1, 0.2, 0.3, 0.45):
        m.drop_path_prob = p
        y = compiled(x)
        kept = (y.flatten(1) != 0).any(1)
        assert torch.allclose(y[kept], x[kept] / (1 - p))                     # survivors scaled by 1 / keep
        assert abs(kept.float().mean().item() - (1 - p)) < 0.04               # 4000 samples: ~4.5 sigma
    assert counters['stats']['unique_graphs'] == 2, dict(counters['stats'])


@pytest.mark.slow                      # dynamo traces the network once per run and mode: minutes on 2 busy cores
def test_compile_flag_trains_the_same_run_and_saves_plain_keys(tmp_path, monkeypatch, capsys):
    """--compile (dynamo's eager backend here; inductor in the slow test below) gives the eager run's metrics,
    writes the uncompiled state dict keys (no `_orig_mod.`), resumes an eager run and evaluates."""
    argv = [*TINY, '--drop_path_prob', 0, '--epochs', 2]        # drop path: the same masks only in eager mode
    assert _cli(argv + ['--save', tmp_path / 'eager']) == 0
    _eager_compile(monkeypatch)
    assert _cli(argv + ['--compile', '--save', tmp_path / 'compiled']) == 0
    assert _cli(argv + ['--stop_after', 1, '--save', tmp_path / 'split']) == 0
    torch._dynamo.reset()                    # each run compiles afresh (no run near the recompile limit of 8)
    assert _cli(argv + ['--compile', '--resume', tmp_path / 'split']) == 0       # an eager checkpoint goes on
    capsys.readouterr()
    eager = read_metrics(tmp_path / 'eager' / 'metrics.jsonl')
    for run in ('compiled', 'split'):
        recs = read_metrics(tmp_path / run / 'metrics.jsonl')
        for a, b in zip(eager, recs, strict=True):
            for k in ('train_loss', 'val_loss', 'val_top1', 'best_top1'):
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (run, k)
    keys = list(NetworkCIFAR(8, 10, 3, True, G.DARTS_V2).state_dict())
    for name in ('checkpoint.pth.tar', 'model_best.pth.tar'):
        assert list(torch.load(tmp_path / 'compiled' / name)['state_dict']) == keys
    torch._dynamo.reset()
    assert _cli(argv + ['--compile', '--evaluate', tmp_path / 'compiled' / 'checkpoint.pth.tar']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['val_top1'] == eager[-1]['val_top1']


@pytest.mark.slow
def test_inductor_compiled_steps_give_the_eager_losses():
    """A few training steps (auxiliary head on, drop path off) and an evaluation with torch.compile's default
    backend give the eager losses within float tolerance. Minutes on a 2-core CPU (code generation)."""
    import copy
    torch._dynamo.reset()
    torch.manual_seed(0)
    base = NetworkCIFAR(4, 10, 3, True, G.GENAS_FLATNESS_CIFAR10).to(memory_format=torch.channels_last)
    batches = [(torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (8,))) for _ in range(4)]
    cfg = StepConfig(grad_clip=5.0, amp=False, auxiliary_weight=0.4)
    curves, outputs = [], []
    for compiled in (False, True):
        net = copy.deepcopy(base)
        run = torch.compile(net) if compiled else net
        opt = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
        scaler = torch.amp.GradScaler('cpu', enabled=False)
        run.train()
        curves.append([train_step(run, x, y, opt, scaler, torch.nn.CrossEntropyLoss(), cfg)[1].item()
                       for x, y in batches])
        run.eval()
        with torch.no_grad():
            outputs.append(run(batches[0][0])[0])
    assert curves[1] == pytest.approx(curves[0], rel=1e-4), curves
    assert torch.allclose(outputs[1], outputs[0], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_torchrun_compiled_run_saves_plain_keys_that_evaluate_alike(tmp_path):
    """--compile under torchrun (DDP wrapped, then compiled; evaluation compiled separately): the checkpoint holds
    the uncompiled, unwrapped keys and an eager single process evaluates it to the recorded numbers."""
    run = tmp_path / 'ddp'
    args = [*TINY, '--epochs', 1, '--device', 'cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(ROOT / 'retrain' / 'retrain.py'), *map(str, args), '--compile', '--save', str(run)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 process(es)' in (run / 'log.txt').read_text() and 'compiled' in (run / 'log.txt').read_text()
    rec = read_metrics(run / 'metrics.jsonl')[-1]
    keys = list(NetworkCIFAR(8, 10, 3, True, G.DARTS_V2).state_dict())
    assert list(torch.load(run / 'checkpoint.pth.tar')['state_dict']) == keys
    single = run_script('retrain/retrain.py', *args, '--evaluate', run / 'checkpoint.pth.tar')
    result = json.loads(single.stdout.strip().splitlines()[-1])
    assert result['val_images'] == rec['val_images'] == 128
    assert result['val_loss'] == pytest.approx(rec['val_loss'], rel=1e-4)
    assert abs(result['val_top1'] - rec['val_top1']) <= 1 / 128          # at most one image on a near tie


def test_drop_path_probability_grows_from_zero_one_epoch_at_a_time(tmp_path, capsys):
    """Epoch e (0-based) of E trains at drop_path_prob * e / E: 0 in the first epoch, never the next epoch's."""
    assert _cli([*TINY, '--epochs', 3, '--drop_path_prob', 0.3, '--save', tmp_path / 'run']) == 0
    recs = read_metrics(tmp_path / 'run' / 'metrics.jsonl')
    assert [r['drop_path_prob'] for r in recs] == [pytest.approx(0.3 * e / 3) for e in range(3)]


# --- bad input, by kind: exit 2, one error line, every file of every run unchanged ------------------------------

S3 = [str(a) for a in TINY_RETRAIN]          # the flags of foreign_runs' retrain run


def _run_with_checkpoint(make):
    """prepare(b): b/run is a copy of the retrain run whose checkpoint.pth.tar is replaced by make(path, ckpt)."""
    def prepare(b):
        shutil.copytree(b / 'retrain', b / 'run')
        path = b / 'run' / 'checkpoint.pth.tar'
        ckpt = torch.load(path, weights_only=True)
        path.unlink()
        make(path, ckpt)
    return prepare


def _nan_weights(b):
    ckpt = torch.load(b / 'retrain' / 'model_best.pth.tar', weights_only=True)
    ckpt['state_dict'] = {k: v.fill_(float('nan')) if v.is_floating_point() else v
                          for k, v in ckpt['state_dict'].items()}
    torch.save(ckpt, b / 'nan.pth.tar')


def _resume3(name, *extra):
    return lambda b: S3 + ['--epochs', 2, '--resume', b / name, *extra]


def _fresh3(*extra):
    return lambda b: S3 + ['--save', b / 'out', *extra]


def _evaluate(name, *extra):
    return lambda b: S3 + ['--evaluate', b / name, *extra]


# (id, argv given the copy b of foreign_runs, text of the one error line, prepare(b) or None)
STAGE3_BAD_INPUTS = [
    # another kind of run directory, or a folder where checkpoint.pth.tar belongs: nothing of it may be rewritten
    ('resume a supernet run', _resume3('supernet'), 'holds a stage-1 supernet run', None),
    ('resume a search run', _resume3('search'), 'holds a stage-2 evolutionary search', None),
    ('resume a ground truth', _resume3('gt'), 'holds proxy-study ground truth', None),
    ('fresh run into a supernet run', lambda b: S3 + ['--save', b / 'supernet'], 'holds a stage-1 supernet run', None),
    ('checkpoint.pth.tar is a directory', _resume3('run'), 'is a directory',
     _run_with_checkpoint(lambda path, ckpt: path.mkdir())),
    ('--save is a file', lambda b: S3 + ['--save', b / 'afile'], 'is an existing file, not a directory', None),
    # checkpoints of the wrong content
    ('checkpoint is text', _resume3('run'), 'cannot load checkpoint',
     _run_with_checkpoint(lambda path, ckpt: path.write_text('not a checkpoint\n'))),
    ('checkpoint is a list', _resume3('run'), 'holds a list, not a dict',
     _run_with_checkpoint(lambda path, ckpt: torch.save([1, 2], path))),
    ('checkpoint is an int', _resume3('run'), 'holds a int, not a dict',
     _run_with_checkpoint(lambda path, ckpt: torch.save(3, path))),
    ('checkpoint with a string epoch', _resume3('run'), "its 'epoch' entry is a str",
     _run_with_checkpoint(lambda path, ckpt: torch.save({**ckpt, 'epoch': '1'}, path))),
    ('checkpoint without state_dict', _resume3('run'), "has no 'state_dict' entry",
     _run_with_checkpoint(lambda path, ckpt: torch.save({'epoch': 1}, path))),
    ('resume a stage-1 checkpoint', lambda b: S3 + ['--epochs', 2, '--resume', b / 'supernet' / 'last.pth.tar',
                                                    '--save', b / 'out'], 'does not fit this model', None),
    ('--evaluate a text file', _evaluate('text.pth.tar'), 'cannot load checkpoint', None),
    ('--evaluate a list', _evaluate('list.pth.tar'), 'holds a list, not a dict', None),
    ('--evaluate an int', _evaluate('int.pth.tar'), 'holds a int, not a dict', None),
    ('--evaluate NaN weights', _evaluate('nan.pth.tar'), 'holds NaN or infinite weights', _nan_weights),
    ('--evaluate a stage-1 checkpoint', _evaluate('supernet/checkpoint_epoch_1.pth.tar'), 'does not fit this model', None),
    ('--evaluate with --resume', _evaluate('retrain/model_best.pth.tar', '--resume', 'retrain'),
     '--evaluate only validates a checkpoint and --resume continues training one', None),
    # numbers out of range
    ('--seed beyond 64 bits', _fresh3('--seed', 2 ** 64), '--seed must be >= 0 and <= 9223372036854775807', None),
    ('negative --seed', _fresh3('--seed', -1), '--seed must be >= 0', None),
    ('--init_channels of a million', _fresh3('--init_channels', 10 ** 6), 'do not fit in memory', None),
    ('negative --init_channels', _fresh3('--init_channels', -4), '--init_channels must be >= 1', None),
    ('--layers of a hundred thousand', _fresh3('--layers', 10 ** 5), '--layers must be >= 1 and <= 200', None),
    ('negative --weight_decay', _fresh3('--weight_decay', -1e-4), '--weight_decay must be >= 0', None),
    ('negative --momentum', _fresh3('--momentum', -0.9), '--momentum must be >= 0 and < 1', None),
    ('--momentum 1', _fresh3('--momentum', 1), '--momentum must be >= 0 and < 1', None),
    ('--label_smooth 5', _fresh3('--label_smooth', 5), '--label_smooth must be >= 0 and < 1', None),
    ('negative --label_smooth', _fresh3('--label_smooth', -0.1), '--label_smooth must be >= 0 and < 1', None),
    ('--batch_size 1', _fresh3('--batch_size', 1), 'BatchNorm needs at least 2', None),
    ('--report_freq 0', _fresh3('--report_freq', 0), '--report_freq must be >= 1', None),
    ('negative --stop_after', _fresh3('--stop_after', -1), '--stop_after must be >= 0', None),
    ('negative --train_subset', _fresh3('--train_subset', -1), '--train_subset must be >= 0', None),
    ('negative --test_subset', _fresh3('--test_subset', -1), '--test_subset must be >= 0', None),
    ('--learning_rate nan', _fresh3('--learning_rate', 'nan'), '--learning_rate must be > 0, got nan', None),
    ('--learning_rate inf', _fresh3('--learning_rate', 'inf'), '--learning_rate must be > 0, got inf', None),
    ('negative --grad_clip', _fresh3('--grad_clip', -5), '--grad_clip must be >= 0', None),
    ('--drop_path_prob 1', _fresh3('--drop_path_prob', 1), '--drop_path_prob must be >= 0 and < 1', None),
    ('--drop_path_prob nan', _fresh3('--drop_path_prob', 'nan'), '--drop_path_prob must be >= 0 and < 1', None),
    ('negative --auxiliary_weight', _fresh3('--auxiliary_weight', -0.4), '--auxiliary_weight must be >= 0', None),
    ('--auxiliary_weight nan', _fresh3('--auxiliary_weight', 'nan'), '--auxiliary_weight must be >= 0', None),
    ('--epochs 0', _fresh3('--epochs', 0), '--epochs must be >= 1', None),
    ('negative --warmup_epochs', _fresh3('--warmup_epochs', -1), '--warmup_epochs must be >= 0', None),
    ('negative --cutout_length', _fresh3('--cutout_length', -1), '--cutout_length must be >= 0', None),
]


@pytest.mark.parametrize('argv, message, prepare', [c[1:] for c in STAGE3_BAD_INPUTS],
                         ids=[c[0] for c in STAGE3_BAD_INPUTS])
def test_bad_input_is_refused_before_anything_is_written(foreign_runs, argv, message, prepare, tmp_path, capsys):
    code, before, after = refused_in_copy(retrain, foreign_runs, tmp_path, argv, prepare)
    assert_refused(code, capsys.readouterr().err, message, before, after)
