"""The README's commands: every one is run by this suite or marked as needing GPUs / data we lack."""
import json
import statistics

import pytest

from conftest import doc_blocks, readme_blocks, run_script, snapshot_dir

KNOWN = ('run', 'tiny', 'ci')


def test_every_bash_block_is_marked():
    blocks = doc_blocks()
    assert len(blocks) >= 10
    assert {path.name for path, _, _ in blocks} >= {'README.md', 'train_supernet.md', 'evolutionary_search.md',
                                                     'retrain.md', 'proxy_study.md', 'performance.md'}
    for path, marker, body in blocks:
        assert marker is not None, f'{path.name}: a bash block without a <!-- test: ... --> marker:\n{body}'
        assert marker in KNOWN or marker.startswith('needs '), f'{path.name}: {marker}'


def test_ci_block_is_what_ci_runs():
    from conftest import ROOT
    ci = (ROOT / '.ci' / 'run').read_text()
    for marker, body in readme_blocks():
        if marker == 'ci':
            for line in body.splitlines():
                if line.strip() and not line.startswith('#'):
                    assert line.strip() in ci


@pytest.mark.slow
def test_offline_commands_succeed(readme_runs):
    _, results = readme_runs
    assert len(results) >= 7
    for marker, body, proc in results:
        assert proc.returncode == 0, f'{body}\nexit {proc.returncode}\n{proc.stderr[-3000:]}'


@pytest.mark.slow
def test_demo_reports_and_skips_finished_stages_on_a_second_run(readme_runs):
    sandbox, results = readme_runs
    demo = sandbox / 'runs' / 'demo'
    report = (demo / 'report.md').read_text()
    for needle in ('## 1. Supernet', '`wlm`, score = wlm', '`angle+wlm`, score = angle / pi', 'Do the two searches agree?',
                   'baseline: a uniformly random cell', 'multiply-adds', 'Wall time', 'tensorboard --logdir',
                   '](retrain/cell_normal.png)', '](search-wlm/search_progress.png)'):
        assert needle in report, needle
    for image in ('search-wlm/search_progress.png', 'search-angle-wlm/search_progress.png', 'retrain/cell_reduce.png',
                  'retrain-baseline/cell_normal.png'):
        assert (demo / image).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', image
    before = snapshot_dir(demo / 'retrain')
    proc = run_script('demo.py', '--tiny', '--out', demo)
    assert proc.stdout.count('done already') == 5 and '== 1. supernet: python3' not in proc.stdout, proc.stdout
    assert snapshot_dir(demo / 'retrain') == before


@pytest.mark.slow
def test_bench_block_prints_one_json_object(readme_runs):
    _, results = readme_runs
    proc = next(p for _, body, p in results if 'benchmarks/bench.py' in body)
    out = json.loads(proc.stdout)
    assert {'device', 'torch', 'threads', 'settings', 'results'} <= set(out)
    assert out['results']['supernet_train']['images_per_s'] > 0
    assert out['results']['retrain_cifar']['images_per_s'] > 0
    for metric in ('wlm', 'angle', 'acc', 'angle+wlm'):
        res = out['results'][f'score_{metric}']
        assert res['seconds_per_candidate'] == statistics.median(res['seconds']) > 0


def test_demo_sh_checks_every_requirement_of_the_tests_and_the_demo(tmp_path):
    """demo.sh --check-only reads both requirements files: here everything is installed, and a requirement added
    to requirements-dev.txt (as pytest-xdist once was) that is not installed is named."""
    import shutil
    import subprocess
    from conftest import ROOT
    ok = subprocess.run(['bash', str(ROOT / 'demo.sh'), '--check-only'], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == '', ok.stdout + ok.stderr
    for name in ('demo.sh', 'requirements.txt', 'requirements-dev.txt'):
        shutil.copy(ROOT / name, tmp_path / name)
    with open(tmp_path / 'requirements-dev.txt', 'a') as f:
        f.write('surely-not-an-installed-distribution>=1.0  # a test\n')
    bad = subprocess.run(['bash', str(tmp_path / 'demo.sh'), '--check-only'], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout.split() == ['surely-not-an-installed-distribution']
