"""benchmarks/bench.py and benchmarks/precision_tau.py: the command-line contract, and precision_tau on a tiny
supernet."""
import math

import pytest
import torch

from benchmarks import bench, precision_tau
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
