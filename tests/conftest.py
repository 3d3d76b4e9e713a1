"""Shared test helpers. Tests run on the CPU with small shapes; the Fashion-MNIST ones need Debian's
dataset-fashion-mnist and may skip without it, except under CI (CI=true), where they fail."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')
# pytest.ini runs one pytest-xdist worker per core: then one torch thread per worker and per stage it
# starts (run_script passes it on), as two-thread workers on two cores spin against each other. Set here,
# before any test module imports torch.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'


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


# --- one tiny supernet per search space, trained once per test process ------------------------------

TINY_SUPERNETS = {
    'darts': ['--dataset', 'synthetic', '--init_channels', 4, '--layers', 3, '--batch_size', 32, '--train_subset', 128,
              '--valid_subset', 64, '--valid_bn_images', 32, '--seed', 1, '--epochs', 1, '--device', 'cpu'],
    'nb201': ['--space', 'nb201', '--dataset', 'synthetic', '--init_channels', 4, '--layers', 1, '--batch_size', 32,
              '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 32, '--seed', 1, '--epochs', 1,
              '--device', 'cpu'],
}


@pytest.fixture(scope='session')
def tiny_supernet(tmp_path_factory):
    """space -> the run directory of a 1-epoch stage-1 run of TINY_SUPERNETS[space] (checkpoint_epoch_0.pth.tar,
    checkpoint_epoch_1.pth.tar, last.pth.tar, split.json, args.json), built on first use. Shared: read it, copy
    it before resuming or writing into it."""
    built = {}

    def get(space='darts'):
        if space not in built:
            from train_supernet import train
            run = tmp_path_factory.mktemp(f'supernet-{space}') / 'run'
            train.main(train.parse_args([str(a) for a in TINY_SUPERNETS[space] + ['--save', run]]))
            built[space] = run
        return built[space]
    return get


def assert_refused(code, err, message, before, after):
    """The CLI contract for bad input: exit status 2, exactly one `error:` line holding `message`, and every file
    that was there before byte-identical (`before`, `after`: snapshot_dir of the folders it could write)."""
    lines = [ln for ln in err.splitlines() if ln.startswith('error:')]
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert after == before


# --- the bad-input tables of the stage files --------------------------------------------------------

# A 1-epoch stage-3 run (C=4, 3 cells, 64 images) whose run directory the tables refer to.
TINY_RETRAIN = ['--dataset', 'synthetic', '--arch', 'DARTS_V2', '--init_channels', 4, '--layers', 3, '--batch_size', 32,
                '--learning_rate', 0.05, '--train_subset', 64, '--test_subset', 32, '--report_freq', 1, '--seed', 1,
                '--epochs', 1]


def refusal_base(base, supernet=None, retrain=False):
    """Fill `base` with what a bad-input table points at: base/supernet (a copy of the finished stage-1 run
    `supernet`), base/retrain (a finished TINY_RETRAIN run), base/comments.txt (only comments) and base/afile (a
    file where a directory is expected). Returns base."""
    import shutil
    if supernet is not None:
        shutil.copytree(supernet, base / 'supernet')
    if retrain:
        from retrain import retrain as stage3
        assert cli_exit_code(stage3, TINY_RETRAIN + ['--save', base / 'retrain']) == 0
    (base / 'comments.txt').write_text('# only a comment\n\n   # another\n')
    (base / 'afile').write_text('not a directory\n')
    return base


def stage_cli(module, argv, capsys):
    """(exit status, stderr) of a stage CLI run in this process."""
    code = cli_exit_code(module, [str(a) for a in argv])
    return code, capsys.readouterr().err


def error_lines(err):
    return [ln for ln in err.splitlines() if ln.startswith('error:')]


def check_refusal(module, base, argv, message, capsys):
    """A REFUSALS row of a stage's test file: the CLI `module` given argv (with `{b}` in `message` the folder
    `base`) exits 2 with one error line holding the message, every file under base stays byte-identical and
    neither base/out nor base/nothing appears."""
    before = snapshot_dir(base)
    code, err = stage_cli(module, argv, capsys)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and message.format(b=base) in lines[0], err
    assert snapshot_dir(base) == before
    assert not (base / 'out').exists() and not (base / 'nothing').exists()


def nonfinite_tensors(run):
    """How many floating-point tensors of the *.pth.tar files of `run` hold a NaN or an infinity."""
    import torch
    bad = 0
    for p in Path(run).glob('*.pth.tar'):
        state = torch.load(p, weights_only=True)['state_dict']
        bad += sum(1 for t in state.values() if t.is_floating_point() and not torch.isfinite(t).all())
    return bad


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


# --- data in the formats of the reference's datasets ----------------------------------------------------

def split_file_halves(name):
    """(train indices, valid indices) of a shipped NAS-Bench-201 split file, in the file's order."""
    import json
    import data
    doc = json.loads((data.SPLITS_DIR / name).read_text())
    return [int(i) for i in doc['train'][1]], [int(i) for i in doc['valid'][1]]


IMAGENET16_PER_FILE = 24


def imagenet16_entry(seed, n):
    """n images whose pixel value encodes (image, channel), labels 1..1000 with some above 120."""
    import numpy as np
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 1001, n)
    labels[: n // 2] = rng.integers(1, 121, n // 2)                     # at least half kept
    pix = np.zeros((n, 3, 16, 16), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            pix[i, c] = (7 * i + 60 * c + seed) % 256
    return {'data': pix.reshape(n, -1), 'labels': labels.tolist(), 'mean': np.zeros(768)}


@pytest.fixture
def imagenet16(tmp_path):
    """ImageNet16-120 (NAS-Bench-201's 16x16 downsampled ImageNet) in its pickle format: (root, {file: entry})."""
    import pickle
    root = tmp_path / 'ImageNet16'
    root.mkdir()
    entries = {}
    for name, seed in [(f'train_data_batch_{i}', i) for i in range(1, 11)] + [('val_data', 99)]:
        entries[name] = imagenet16_entry(seed, IMAGENET16_PER_FILE)
        with open(root / name, 'wb') as f:
            pickle.dump(entries[name], f)
    return root, entries


# --- torchrun on the CPU (gloo) -------------------------------------------------------------------------

def torchrun(script, *args, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
                           str(ROOT / script), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='session')
def ddp_supernet(tmp_path_factory):
    """A 1-epoch stage-1 run of two processes (batch 16 each: the global batch of TINY_SUPERNETS['darts'])."""
    run = tmp_path_factory.mktemp('ddp') / 'supernet'
    torchrun('train_supernet/train.py', '--dataset', 'synthetic', '--init_channels', 4, '--layers', 3,
             '--batch_size', 16, '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 32, '--epochs', 1,
             '--seed', 1, '--save', run, '--device', 'cpu')
    return run


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


def cli_exit_code(module, argv):
    """Run a stage CLI (module with main / parse_args) in this process; returns its exit status."""
    from utils import run_cli
    try:
        run_cli(module.main, module.parse_args, [str(a) for a in argv])
        return 0
    except SystemExit as e:
        return e.code


def snapshot_dir(path):
    """{relative path: bytes} of every file under `path` (to prove nothing was overwritten)."""
    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}


# --- the commands of README.md and docs/*.md -------------------------------------------------------------
# Every ```bash block of README.md and of the docs pages is preceded by a marker: <!-- test: run --> (executed
# as written, in order, by the session fixture below), <!-- test: tiny --> (executed with --tiny appended: the
# demo and the benchmark), <!-- test: ci --> (what .ci/run executes) or <!-- test: needs ... --> (GPUs or data
# this machine cannot have). The order is README.md, then DOC_PAGES, then any other page by name: a `run`
# block may use what a `run` block before it wrote (stage 2's search reads stage 1's supernet).

BLOCK = re.compile(r'(?:<!-- test: (?P<marker>[^>]*?) -->\n)?```bash\n(?P<body>.*?)```', re.S)
DOC_PAGES = ('train_supernet.md', 'evolutionary_search.md', 'retrain.md', 'nas-bench-201-stages.md',
             'nas-bench-201.md', 'proxy_study.md', 'reliability.md', 'performance.md', 'differences.md',
             'extending.md', 'testing.md')


def doc_files():
    """README.md, then the docs pages: those of DOC_PAGES in that order, any other docs/*.md after them."""
    docs = ROOT / 'docs'
    pages = [docs / name for name in DOC_PAGES if (docs / name).is_file()]
    pages += sorted(p for p in docs.glob('*.md') if p.name not in DOC_PAGES)
    return [ROOT / 'README.md', *pages]


def doc_blocks():
    """[(file, marker or None, body)] of every bash block of README.md and the docs pages, in order."""
    return [(path, m.group('marker'), m.group('body')) for path in doc_files()
            for m in BLOCK.finditer(path.read_text())]


def readme_blocks():
    """[(marker or None, body)] of every bash block of README.md and the docs pages, in order."""
    return [(marker, body) for _, marker, body in doc_blocks()]


def _with_tiny(body):
    lines = body.splitlines()
    return '\n'.join(ln + ' --tiny' if ln.strip() and not ln.lstrip().startswith('#') and not ln.endswith('\\')
                     else ln for ln in lines)


@pytest.fixture(scope='session')
def readme_runs(fmnist, tmp_path_factory):
    """Run the offline commands of README.md and the docs pages in a sandbox that links the repository's files
    (so their relative paths, runs/ included, resolve as in a checkout). Returns (sandbox, [(marker, body, proc)])."""
    sandbox = tmp_path_factory.mktemp('readme')
    for entry in ROOT.iterdir():
        if entry.name not in ('.git', 'runs', 'cells', '.pytest_cache') and not entry.name.endswith('.jsonl'):
            (sandbox / entry.name).symlink_to(entry)
    env = dict(os.environ, PYTHONHASHSEED='0')
    results = []
    for marker, body in readme_blocks():
        if marker not in ('run', 'tiny'):
            continue
        script = body if marker == 'run' else _with_tiny(body)
        proc = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=sandbox, env=env, capture_output=True,
                              text=True)
        results.append((marker, body, proc))
    return sandbox, results


# --- kill -9 at a chosen moment -----------------------------------------------------------------------

def kill_moments(seed, first_epoch, later):
    """Three seeded-random progress points: one in [first_epoch) (inside the first epoch or generation), two in
    [first_epoch.stop, later.stop)."""
    import random
    rng = random.Random(seed)
    return [rng.choice(first_epoch), *sorted(rng.sample(list(later), 2))]


def slow_params(values):
    """Parametrize values marked `slow` (the kill -9 moments: the default run resumes after --stop_after only)."""
    return [pytest.param(v, marks=pytest.mark.slow) for v in values]


def log_lines(path, needle):
    """How many lines of a log file contain `needle` (0 while it does not exist)."""
    try:
        return Path(path).read_text().count(needle)
    except OSError:
        return 0


def run_and_kill(script, *args, reached, timeout=600):
    """Start a stage CLI in a fresh process and SIGKILL it as soon as reached() is true (polled every 5 ms).
    Returns True when it was killed, False when it ended before (then it must have succeeded)."""
    import time
    env = dict(os.environ, PYTHONHASHSEED='0', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while proc.poll() is None and not reached():
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f'{script} did not reach the kill point in {timeout}s')
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
    err = proc.communicate()[1]
    assert proc.returncode in (0, -9), f'{script} exited {proc.returncode}:\n{err[-3000:]}'
    return proc.returncode == -9


# --- run directories of every kind and broken files, for the bad-input tables of each CLI ----------------------

TINY_RETRAIN = ['--dataset', 'synthetic', '--arch', 'DARTS_V2', '--init_channels', 4, '--layers', 3, '--batch_size', 32,
                '--learning_rate', 0.05, '--train_subset', 64, '--test_subset', 32, '--seed', 1, '--epochs', 1,
                '--device', 'cpu']


def _foreign_runs(base, supernet):
    """Fill `base` with a run directory of each kind and with files that look like inputs and are not."""
    import json
    import shutil
    import torch
    from retrain import retrain
    shutil.copytree(supernet, base / 'supernet')
    assert cli_exit_code(retrain, TINY_RETRAIN + ['--save', base / 'retrain']) == 0
    search = base / 'search'              # a stage-2 run as the code before run.json wrote it
    search.mkdir()
    (search / 'search_checkpoint.json').write_text(json.dumps({'args': {}, 'evolution': {'epoch': 1}}))
    (search / 'args.json').write_text('{"max_epochs": 2}\n')
    (search / 'metrics.jsonl').write_text('{"epoch": 1, "best_score": 0.5}\n')
    gt = base / 'gt'                      # a proxy-study ground truth (its protocol.json names it)
    (gt / 'pairs').mkdir(parents=True)
    (gt / 'protocol.json').write_text('{"dataset": "synthetic", "epochs": 1}\n')
    (base / 'afile').write_text('not a directory\n')
    (base / 'text.pth.tar').write_text('this is a text file, not a checkpoint\n')
    torch.save([1, 2, 3], base / 'list.pth.tar')
    torch.save(7, base / 'int.pth.tar')


@pytest.fixture(scope='session')
def foreign_runs(tiny_supernet, tmp_path_factory):
    """A folder (read it, copy it before writing) with run directories of every kind a CLI may be pointed at by
    mistake (supernet: tiny_supernet('darts'), retrain: a 1-epoch stage-3 run of TINY_RETRAIN, search, gt) and
    broken inputs: afile (a text file), text.pth.tar (text), list.pth.tar / int.pth.tar (pickles of a list, an
    int)."""
    base = tmp_path_factory.mktemp('foreign') / 'b'
    base.mkdir()
    _foreign_runs(base, tiny_supernet('darts'))
    return base


def refused_in_copy(module, foreign_runs, tmp_path, argv, prepare=None):
    """Run CLI `module` with argv(b) on a copy b of foreign_runs (prepare(b) first: the case's own broken files).
    Returns (exit status, snapshot of b before, snapshot after) for assert_refused."""
    import shutil
    b = tmp_path / 'b'
    shutil.copytree(foreign_runs, b)
    if prepare is not None:
        prepare(b)
    before = snapshot_dir(b)
    code = cli_exit_code(module, [str(a) for a in argv(b)])
    return code, before, snapshot_dir(b)
