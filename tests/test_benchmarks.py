"""benchmarks/bench.py, benchmarks/precision_tau.py and benchmarks/amp_curve.py: the command-line contract, the
machine record, the GFLOP/s arithmetic, the profile, the tiny runs, and precision_tau on a tiny supernet."""
import dataclasses
import datetime
import json
import math

import pytest
import torch

import devices
from benchmarks import amp_curve, bench, machine, precision_tau, profiling
from conftest import cli_exit_code, run_script
from proxy_study import stats

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message where no GPU is visible')


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


@pytest.mark.parametrize('argv, message', [
    (['--tiny', '--bogus'], '--bogus'),
    (['--tiny', '--only', 'score_wlm,no_such_workload'], "unknown workload 'no_such_workload'"),
    (['--tiny', '--device', 'tpu'], "invalid choice: 'tpu'"),
    pytest.param(['--tiny', '--device', 'cuda', '--only', 'data:tensor_batches'], 'no CUDA device is visible',
                 marks=NO_GPU),
])
def test_bench_bad_input_is_one_error_line_with_exit_2(argv, message, capsys):
    assert cli_exit_code(bench, argv) == 2
    assert message in one_error_line(capsys)
    assert capsys.readouterr().out == ''                  # no workload ran, nothing was printed


def test_bench_workloads_follow_the_flags():
    names = bench.workload_names(bench.parse_args(['--levers', '--compile']), 'cpu')
    assert names == bench.WORKLOADS + bench.LEVERS + bench.COMPILE_WORKLOADS
    bf16 = bench.workload_names(bench.parse_args([]), 'cpu', cpu_bf16=True)
    assert bf16 == bench.WORKLOADS + bench.CPU_BF16_VARIANTS
    gpu = bench.workload_names(bench.parse_args(['--compile']), 'cuda')
    assert gpu == bench.WORKLOADS + bench.GPU_VARIANTS + bench.COMPILE_WORKLOADS + bench.COMPILE_GPU_VARIANTS
    assert bench.workload_names(bench.parse_args(['--only', 'data:pil_per_image']), 'cuda') == ['data:pil_per_image']


@pytest.mark.parametrize('argv, message', [
    (['--model_path', 'x.pth.tar', '--bogus'], '--bogus'),
    (['--model_path', 'x.pth.tar', '--candidates', '0'], '--candidates must be >= 1'),
    (['--model_path', 'x.pth.tar', '--precisions', 'bf16,fp8'], "unknown 'fp8'"),
    (['--model_path', 'x.pth.tar', '--metric', 'angle'], 'angle need(s) --init_model_path'),
    (['--model_path', 'x.pth.tar', '--stds', '0.003,0.001'], 'strictly increasing'),
    ([], '--model_path'),
    pytest.param(['--model_path', 'x.pth.tar', '--device', 'cuda'], 'no CUDA device is visible', marks=NO_GPU),
])
def test_precision_tau_bad_input_is_one_error_line_with_exit_2(argv, message, capsys):
    assert cli_exit_code(precision_tau, argv) == 2
    assert message in one_error_line(capsys)


def test_precision_tau_reports_the_kendall_tau_that_is_nan_where_undefined():
    assert precision_tau.kendall_tau is stats.kendall_tau
    assert math.isnan(precision_tau.kendall_tau([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]))


@pytest.mark.slow
def test_precision_tau_on_a_tiny_supernet(tmp_path):
    run_script('train_supernet/train.py', '--dataset', 'synthetic', '--init_channels', 4, '--layers', 3, '--epochs', 1,
               '--train_subset', 64, '--valid_subset', 64, '--valid_bn_images', 32, '--device', 'cpu', '--save',
               tmp_path / 'sn')
    argv = ['--model_path', tmp_path / 'sn' / 'checkpoint_epoch_1.pth.tar', '--candidates', 4, '--precisions', 'bf16',
            '--max_train_img_size', 16, '--max_val_img_size', 32]
    args = precision_tau.parse_args([str(a) for a in argv])
    out = precision_tau.main(args)
    assert list(out['results']) == ['fp32', 'bf16'] and out['candidates'] == 4
    fp32, bf16 = out['results']['fp32'], out['results']['bf16']
    assert fp32['kendall_tau_vs_fp32'] == 1.0 and fp32['max_relative_score_change'] == 0.0    # fp32 vs itself
    assert -1.0 <= bf16['kendall_tau_vs_fp32'] <= 1.0 and 0.0 < bf16['max_relative_score_change'] < 0.1


@NO_GPU
def test_bench_search_ranks_checks_its_arguments_without_a_gpu():
    """The GPU benchmark of ranks per GPU (run it where a GPU is lent) fails here with one line, as does a bad
    list of process counts."""
    for argv, message in ((['--search_ranks', '1,2,4'], 'no CUDA device is visible'),
                          (['--search_ranks', '0,2', '--device', 'cpu'], 'process counts such as 1,2,4')):
        proc = run_script('benchmarks/bench.py', *argv, check=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --- the machine record, the GFLOP/s arithmetic, the profile ---------------------------------------------------

def test_the_machine_record_names_this_machine():
    m = devices.Machine.here('cpu')
    flags = set()
    for line in open('/proc/cpuinfo'):
        if line.startswith('flags'):
            flags = set(line.split(':', 1)[1].split())
            break
    assert m.isa == tuple(f for f in devices.ISA_FLAGS if f in flags)
    assert m.cpu and m.cpu != 'unknown' and m.cpu in open('/proc/cpuinfo').read()
    assert m.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert (m.threads, m.torch, m.gpu) == (torch.get_num_threads(), torch.__version__, None)
    assert 1 <= m.usable_cpus <= m.logical_cpus
    assert datetime.datetime.fromisoformat(m.date).tzinfo is not None
    record = json.loads(json.dumps(m.record()))
    assert record['isa'] == list(m.isa) and record['cpu'] == m.cpu and m.cpu in m.line()
    assert m.cpu_bf16 == bool({'avx512_bf16', 'amx_bf16'} & flags)
    assert dataclasses.replace(m, isa=('avx2', 'avx512f')).cpu_bf16 is False
    assert dataclasses.replace(m, isa=('amx_tile', 'amx_bf16')).cpu_bf16 is True


def test_amp_variants_are_skipped_on_a_cpu_without_bf16_with_a_note():
    m = devices.Machine.here('cpu')
    plain = dataclasses.replace(m, isa=('avx2',))
    assert 'avx512_bf16 or amx_bf16' in bench.skip_reason('supernet_train:amp', 'cpu', plain)
    assert bench.skip_reason('supernet_train', 'cpu', plain) is None
    assert bench.skip_reason('supernet_train:amp', 'cuda', plain) is None
    assert bench.skip_reason('supernet_train:amp', 'cpu', dataclasses.replace(m, isa=('avx512_bf16',))) is None


class TinyConvNet(torch.nn.Module):
    """conv 3->8, 3x3, padding 1 on 8x8 (8 * 64 * 27 = 13,824 multiply-adds), then linear 512->10 (5,120)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.blocks = torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.Flatten()])
        self.head = torch.nn.Linear(512, 10)

    def forward(self, x):
        x = self.conv(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_achieved_gflops_is_two_or_six_flops_per_counted_multiply_add_over_the_time():
    from counting import count_macs
    macs = count_macs(TinyConvNet(), torch.zeros(1, 3, 8, 8))
    assert macs == 8 * 64 * 27 + 512 * 10 == 18944
    assert machine.flops_of(4 * macs, training=True) == 2 * 3 * 4 * 18944
    assert machine.flops_of(4 * macs, training=False) == 2 * 4 * 18944
    peak = machine.Peak(gflops=2.0, median_gflops=1.5, n=8, repeats=1, dtype='float32')
    flops = [machine.flops_of(4 * macs, True)] * 3
    out = machine.achieved(flops, [0.5, 0.25, 1.0], peak)
    assert out['gflops_per_s'] == pytest.approx(454656 / 0.5 / 1e9)           # the median of the three rates
    assert out['fraction_of_peak'] == pytest.approx(454656 / 0.5 / 1e9 / 2.0)
    assert out['gflops'] == pytest.approx(454656 / 1e9)


def test_a_matmul_peak_is_the_best_of_its_timed_products():
    peak = machine.matmul_peak('cpu', n=64, repeats=3)
    assert peak.gflops >= peak.median_gflops > 0 and (peak.n, peak.repeats, peak.dtype) == (64, 3, 'float32')


def test_path_macs_at_batch_one_times_the_batch_are_the_macs_of_the_batch():
    """The supernet workloads count each path at batch 1: the counted ops are linear in the batch."""
    import random
    from counting import count_macs
    from spaces import get_space
    for name, model in (('darts', bench.Network(4, 10, 3)), ('nb201', get_space('nb201').build_supernet(4, 10, 1))):
        space = get_space(name)
        cand = space.random_candidate(random.Random(1))
        per_image = bench.PathMacs(model, space, torch.device('cpu'), torch.contiguous_format)(cand)
        assert per_image > 0
        assert count_macs(model, torch.zeros(3, 3, 32, 32), *space.forward_args(cand)) == 3 * per_image


def test_score_images_count_the_forwards_of_one_candidate():
    s = bench.settings(False)       # 256 BN images in batches of 64, 512 validation images, 3 noise levels
    assert bench.score_images('wlm', s) == 256 + 3 * 512 == bench.score_images('angle+wlm', s)
    assert bench.score_images('acc', s) == 256 + 512 and bench.score_images('angle', s) == 0


def test_profile_groups_by_op_and_by_top_level_module():
    class Inner(torch.nn.Module):       # a parent that calls another forward method directly (as forward_relu)
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(10, 10)

        def forward(self, x):
            return self.forward_twice(x)

        def forward_twice(self, x):
            return self.lin(self.lin(x))

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.inner = TinyConvNet(), Inner()

        def forward(self, x):
            return self.inner.forward_twice(self.inner(self.net(x)))     # inner: 2 calls, one nested
    model = Outer()
    prof = profiling.profile_round(lambda: model(torch.randn(2, 3, 8, 8)).sum().backward(), model,
                                   torch.device('cpu'), top=3)
    assert len(prof['by_op']) == 3 and all(r['self_cpu_ms'] >= 0 for r in prof['by_op'])
    ranked = [r['self_cpu_ms'] for r in prof['by_op']]
    assert ranked == sorted(ranked, reverse=True)
    modules = {r['name']: r['calls'] for r in prof['by_module']}
    assert modules == {'net': 1, 'inner': 2}          # a call of forward and one of forward_twice
    assert 'forward' not in model.inner.__dict__ and 'forward_twice' not in model.inner.__dict__   # restored
    assert list(profiling.top_level_modules(TinyConvNet()))[1][0] == 'blocks.0'
    table = profiling.format_profile('x', prof)
    assert 'top op' in table and 'top module' in table and prof['by_op'][0]['name'][:40] in table


def test_bench_tiny_runs_the_new_workloads_with_machine_gflops_and_profile(capsys):
    from counting import count_macs
    from proxy_study.cells import sample_cells
    from spaces import get_space
    argv = ['--tiny', '--profile', '--only', 'retrain_cifar,nb201_supernet_train,ground_truth_train:amp']
    out = bench.main(bench.parse_args(argv))
    s = out['settings']
    assert set(out['machine']) == {f.name for f in dataclasses.fields(devices.Machine)}
    for name, res in out['results'].items():
        if 'skipped' in res:
            assert name.endswith(':amp') and not devices.Machine.here().cpu_bf16
            continue
        assert res['images_per_s'] > 0 and res['gflops_per_s'] > 0 and res['fraction_of_peak'] > 0, name
        assert res['machine']['cpu'] == out['machine']['cpu'] and res['machine']['threads'] == res['threads']
        assert ('profile' in res) == (name == 'retrain_cifar')
    prof = out['results']['retrain_cifar']['profile']
    assert 1 <= len(prof['by_op']) <= 10 and {r['name'] for r in prof['by_module']} >= {'stem', 'cells.0'}
    assert 'profile of retrain_cifar' in capsys.readouterr().err
    # The ground truth's FLOPs by hand: its one sampled cell, counted at batch 1, x batch x steps x 6.
    gt = out['results']['ground_truth_train:amp']
    if 'skipped' not in gt:
        cell = sample_cells(1, 0, get_space('darts'))[0]
        net = get_space('darts').standalone(cell.candidate, s['gt_C'], 10, s['gt_layers'])
        macs = count_macs(net, torch.zeros(1, 3, 32, 32))
        assert gt['gflops'] == pytest.approx(6 * macs * s['batch'] * s['steps'] / 1e9)
        assert gt['peak']['dtype'] == 'bfloat16'


@NO_GPU
@pytest.mark.parametrize('script, argv', [
    ('benchmarks/bench.py', ['--tiny', '--device', 'cuda']),
    ('benchmarks/precision_tau.py', ['--model_path', 'x.pth.tar', '--device', 'cuda']),
    ('benchmarks/amp_curve.py', ['--tiny', '--device', 'cuda']),
])
def test_cuda_without_a_gpu_is_one_line_with_exit_2(script, argv):
    proc = run_script(script, *argv, check=False)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.strip().splitlines() == ['error: --device cuda was asked for but no CUDA device is visible; '
                                                'use --device cpu']


def test_amp_curve_tiny_compares_the_two_runs(capsys):
    out = amp_curve.main(amp_curve.parse_args(['--tiny']))
    fp32, bf16 = out['runs']['fp32'], out['runs']['bf16']
    assert len(fp32['losses']) == len(bf16['losses']) == amp_curve.TINY['steps']
    assert abs(fp32['losses'][0] - bf16['losses'][0]) < 0.05          # same weights and batch: bf16 rounding only
    diffs = [abs(a - b) for a, b in zip(fp32['losses'], bf16['losses'])]
    if all(math.isfinite(d) for d in diffs):
        assert out['max_abs_loss_difference'] == max(diffs)
        assert out['mean_abs_loss_difference'] == pytest.approx(sum(diffs) / len(diffs))
    else:
        assert math.isnan(out['max_abs_loss_difference']) and math.isnan(out['mean_abs_loss_difference'])
    for run in (fp32, bf16):
        bad = [i + 1 for i, v in enumerate(run['losses']) if not math.isfinite(v)]
        assert run['first_nonfinite_step'] == (bad[0] if bad else None)
    assert 0.0 <= fp32['valid_acc'] <= 1.0 and 0.0 <= bf16['valid_acc'] <= 1.0
    assert out['settings']['steps'] == amp_curve.TINY['steps'] and out['machine']['cpu']
    assert '| final valid accuracy |' in capsys.readouterr().out
