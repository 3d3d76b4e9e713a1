"""The benchmark script must not rot: run it in its tiny mode (no timing assertions)."""
import json
import statistics
import subprocess
import sys

from conftest import ROOT


def test_bench_tiny_prints_one_json_object():
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench.py'), '--tiny'], capture_output=True,
                          text=True, check=True)
    out = json.loads(proc.stdout)
    assert {'device', 'torch', 'threads', 'settings', 'results'} <= set(out)
    for name in ('supernet_train', 'retrain_cifar'):
        res = out['results'][name]
        assert res['images_per_s'] > 0 and res['peak_rss_mb'] > 0
    res = out['results']['supernet_train']
    assert res['images_per_s'] > 0 and res['peak_rss_mb'] > 0 and len(res['seconds']) == out['settings']['repeats']
    for metric in ('wlm', 'angle', 'acc', 'angle+wlm'):
        res = out['results'][f'score_{metric}']
        assert res['seconds_per_candidate'] == statistics.median(res['seconds']) > 0
