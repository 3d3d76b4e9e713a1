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
    for needle in ('Supernet (stage 1)', 'Search: wlm', 'Search: angle+wlm', 'test accuracy after',
                   'multiply-adds', 'Wall time', 'tensorboard --logdir', 'cell_normal'):
        assert needle in report, needle
    before = snapshot_dir(demo / 'retrain')
    proc = run_script('demo.py', '--tiny', '--out', demo)
    assert proc.stdout.count('done already') == 4 and '== 1. supernet: python3' not in proc.stdout, proc.stdout
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
