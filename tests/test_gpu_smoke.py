"""benchmarks/gpu_smoke.sh, the first check on a GPU machine: its CPU dry run passes every step, and a failing
step is reported and sets the exit status."""
import os
import re
import subprocess

import pytest

from conftest import ROOT

SCRIPT = ROOT / 'benchmarks' / 'gpu_smoke.sh'


def smoke(tmp_path, **env):
    proc = subprocess.run(['bash', str(SCRIPT), str(tmp_path / 'work')], capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **env}, cwd=tmp_path)
    status = re.findall(r'^(PASS|FAIL|SKIP) (\S+)', proc.stdout, re.M)
    return proc, status


def test_a_failing_step_is_reported_and_sets_the_exit_status(tmp_path):
    proc, status = smoke(tmp_path, DEVICE='cpu', STEPS='^env$')
    assert proc.returncode == 0 and status == [('PASS', 'env')], proc.stdout
    assert 'SUMMARY 1 passed, 0 failed, 0 skipped' in proc.stdout
    proc, status = smoke(tmp_path, DEVICE='cpu', STEPS='^env$', PYTHON='false')      # the step's command fails
    assert proc.returncode == 1 and status == [('FAIL', 'env')], proc.stdout
    assert 'SUMMARY 0 passed, 1 failed, 0 skipped' in proc.stdout


@pytest.mark.slow
def test_cpu_dry_run_passes_every_step(tmp_path):
    """DEVICE=cpu: every stage at tiny sizes; --compile (minutes on a CPU) is skipped, and the benchmark, whose
    --tiny run tests/test_benchmarks.py checks. The resumed --deterministic run is bit-identical, the 2-rank
    search scores as the 1-rank one."""
    proc, status = smoke(tmp_path, DEVICE='cpu', SKIP_BENCH='1')
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert [s for s in status if s[0] != 'PASS'] == [('SKIP', 's3_compile'), ('SKIP', 'bench_tiny'),
                                                     ('SKIP', 'bench_main')], proc.stdout
    assert {name for _, name in status} >= {
        'env', 's1_fp32', 's1_amp', 's1_det', 's1_det_stop', 's1_det_resume', 's1_resume_bit_identical',
        's2_search_1_rank', 's2_search_2_ranks', 's2_ranks_agree', 's2_given_bf16', 's3_amp_stop', 's3_amp_resume',
        's3_evaluate', 's3_jpegs', 's3_imagenet_folder'}
    assert 'bit-identical: True' in proc.stdout and 'SUMMARY 16 passed, 0 failed, 3 skipped' in proc.stdout
