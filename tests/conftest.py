"""Shared test helpers. Tests run on the CPU with small shapes; the Fashion-MNIST ones need Debian's
dataset-fashion-mnist and may skip without it, except under CI (CI=true), where they fail."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def fmnist_present():
    return os.path.isfile(os.path.join(FMNIST_DIR, 'train-images-idx3-ubyte.gz'))


@pytest.fixture(scope='session')
def fmnist():
    """Skip (fail under CI) when the Fashion-MNIST files are missing."""
    if not fmnist_present():
        if IN_CI:
            pytest.fail(f'Fashion-MNIST is missing from {FMNIST_DIR}: .ci/run must `apt-get install -y dataset-fashion-mnist`')
        pytest.skip('Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)')
    return FMNIST_DIR


def run_script(script, *args, cwd=None, env_extra=None, check=True):
    """Run a stage CLI (path relative to the repo root) in a fresh Python process."""
    env = dict(os.environ, PYTHONHASHSEED='0', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f'{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n'
                             f'stderr:\n{proc.stderr[-3000:]}')
    return proc


def snapshot_dir(path):
    """{relative path: bytes} of every file under `path` (to prove nothing was overwritten)."""
    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


# Stage 1 on Fashion-MNIST, trained once per session and shared by the stage tests downstream.
FMNIST_SUPERNET_ARGS = ['--dataset', 'fashion-mnist', '--init_channels', 8, '--layers', 5, '--epochs', 2,
                        '--train_subset', 16000, '--valid_subset', 1000, '--learning_rate', 0.05,
                        '--batch_size', 64, '--seed', 0, '--report_freq', 100]


@pytest.fixture(scope='session')
def fmnist_supernet(fmnist, tmp_path_factory):
    """Run directory of a small supernet trained on Fashion-MNIST through the stage-1 CLI."""
    run_dir = tmp_path_factory.mktemp('fmnist') / 'supernet'
    run_script('train_supernet/train.py', *FMNIST_SUPERNET_ARGS, '--save', run_dir)
    return run_dir
