"""The data-free NAS-Bench-201 study (proxy_study/nb201_datafree.py, spaces/nb201_scores.py): scores equal to
building each dataset's network and scoring it as the study's metrics do, the report's statistics equal to
scipy's on the written scores and the shipped CSV, resume after a kill, torchrun ranks equal to one process."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from scipy import stats as sps

from conftest import ROOT
from counting import count_macs, count_parameters
from evolutionary_search import zero_cost
from proxy_study import nb201_datafree as study
from spaces import get_space
from spaces.nb201_scores import IMAGE_SIZE, NUM_CLASSES, datafree_scores, init_seed
from spaces.nb201_truth import SHIPPED

CELLS = [[3, 3, 4, 1, 3, 1], [0, 0, 0, 0, 0, 0], [1, 2, 0, 4, 0, 3], [2, 4, 3, 0, 1, 2]]


def reference(cand, seed, dataset):
    """The dataset's network built on its own, scored by counting.py and evolutionary_search/zero_cost.py."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, cand))
        net = get_space('nb201').standalone(cand, 16, NUM_CLASSES[dataset], 5)
    size = IMAGE_SIZE[dataset]
    return {'params': count_parameters(net), 'macs': count_macs(net, torch.zeros(1, 3, size, size)),
            'synflow': zero_cost.synflow(net, (3, size, size))}


@pytest.mark.parametrize('cand', CELLS)
def test_one_build_scores_every_dataset_as_its_own_network_would(cand):
    scores = datafree_scores(cand, seed=3)
    for dataset in NUM_CLASSES:
        ref = reference(cand, 3, dataset)
        assert scores[dataset]['params'] == ref['params'] and scores[dataset]['macs'] == ref['macs']
        assert scores[dataset]['synflow'] == pytest.approx(ref['synflow'], rel=1e-12)
    assert datafree_scores(cand, seed=4)['cifar10']['synflow'] != scores['cifar10']['synflow']


def test_the_cell_of_no_ops_by_hand():
    """All six edges `none`: the stem, the two residual blocks and the classifier, counted by hand."""
    convs = [(3, 16, 3, 32 * 32)]                                         # (C_in, C_out, kernel, output pixels)
    for c_in, c_out, pixels in ((16, 32, 16 * 16), (32, 64, 8 * 8)):
        convs += [(c_in, c_out, 3, pixels), (c_out, c_out, 3, pixels), (c_in, c_out, 1, pixels)]
    conv_macs = sum(a * b * k * k * p for a, b, k, p in convs)
    bn = 2 * (16 + 32 + 32 + 64 + 64 + 64)                                 # stem, 2 per block, the last BN
    scores = datafree_scores([0] * 6)
    for dataset, k in NUM_CLASSES.items():
        area = (IMAGE_SIZE[dataset] / 32) ** 2
        assert scores[dataset]['macs'] == conv_macs * area + 64 * k
        assert scores[dataset]['params'] == sum(a * b * kk * kk for a, b, kk, _ in convs) + bn + 64 * k + k


def shipped_values():
    """{arch: {dataset: value}} read straight from the shipped CSV text."""
    with open(SHIPPED, newline='') as f:
        rows = list(csv.DictReader(f))
    return {r['arch']: {'cifar10': float(r['cifar10']), 'cifar100': float(r['cifar100']),
                        'imagenet16-120': float(r['ImageNet16-120'])} for r in rows}


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    save = tmp_path_factory.mktemp('datafree') / 'tiny'
    doc = study.main(study.parse_args(['--tiny', '--save', str(save)]))
    return save, doc


def test_tiny_run_reports_the_rank_statistics_of_its_written_scores(tiny):
    save, doc = tiny
    lines = read_lines(save / 'scores.jsonl')
    assert len(lines) == study.TINY_CELLS == doc['cells'] and not list(save.glob('scores.rank*'))
    truth = shipped_values()
    for dataset, rows in doc['datasets'].items():
        acc = [truth[rec['arch']][dataset] for rec in lines]
        for row in rows:
            score = [rec[dataset][row['metric']] for rec in lines]
            assert row['tau']['value'] == pytest.approx(sps.kendalltau(score, acc).statistic, abs=1e-12)
            assert row['rho']['value'] == pytest.approx(sps.spearmanr(score, acc).statistic, abs=1e-12)
            assert row['tau']['lo'] <= row['tau']['value'] <= row['tau']['hi']
            assert set(row['precision_at_top']) == {'0.01', '0.05', '0.1'}
    ref = reference(lines[5]['candidate'], 0, 'cifar100')
    assert lines[5]['cifar100']['synflow'] == pytest.approx(ref['synflow'], rel=1e-12)
    text = (save / 'report.md').read_text()
    assert 'NAS-Bench-201 200-epoch validation accuracy, via NASLib' in text and 'single seed' in text
    assert 'cifar100 (100 classes, 32x32 input)' in text and 'imagenet16-120 (120 classes, 16x16 input)' in text
    assert 'torch.utils.flop_counter' in text and 'spaces/nb201_data/nb201_val_accuracy.csv' in text
    assert all((save / f'{kind}_{d}.png').stat().st_size > 0 for kind in ('scatter', 'taus') for d in truth[lines[0][
        'arch']])


def test_a_rerun_after_a_kill_drops_the_cut_line_and_scores_only_the_rest(tiny, tmp_path):
    save, _ = tiny
    full = (save / 'scores.jsonl').read_text()
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    for name in ('settings.json', 'run.json'):            # what the killed run had written before scoring
        (resumed / name).write_text((save / name).read_text())
    kept = full.splitlines(keepends=True)
    (resumed / 'scores.rank0.jsonl').write_text(''.join(kept[:7]) + kept[7][:30])      # killed mid-line
    study.main(study.parse_args(['--tiny', '--save', str(resumed)]))
    assert (resumed / 'scores.jsonl').read_text() == full
    assert read_lines(resumed / 'runs.jsonl')[-1]['cells_scored'] == study.TINY_CELLS - 7


def test_other_scoring_flags_are_refused_in_the_same_run_directory(tiny, capsys):
    from conftest import cli_exit_code
    save, _ = tiny
    assert cli_exit_code(study, ['--tiny', '--seed', 1, '--save', save]) == 2
    assert 'holds scores made with other flags (--seed 0 -> 1)' in capsys.readouterr().err


def test_two_torchrun_ranks_write_what_one_process_writes(tiny, tmp_path):
    save, doc = tiny
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(ROOT / 'proxy_study' / 'nb201_datafree.py'), '--tiny', '--save', str(tmp_path / 'two')],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / 'two' / 'scores.jsonl').read_text() == (save / 'scores.jsonl').read_text()
    two = json.loads((tmp_path / 'two' / 'report.json').read_text())
    assert two['datasets'] == doc['datasets'] and two['runs'][-1]['processes'] == 2
    assert 'torchrun --standalone --nproc_per_node 2' in (tmp_path / 'two' / 'report.md').read_text()
