"""The proxy study over NAS-Bench-201 (proxy_study/nb201.py), end to end on a tiny NB201 supernet of stage 1
(generated data) against a ground-truth CSV (the shipped one or a generated one) and against the NATS-Bench
test folder's records of cells 0, 11 and 284 (CPU, seconds)."""
import csv
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from conftest import cli_exit_code, snapshot_dir
from proxy_study import nb201 as study
from proxy_study.cells import select_cells
from proxy_study.records import read_scores
from spaces import get_space, nb201
from spaces.nb201_truth import SHIPPED

needs_nats = pytest.mark.skipif(importlib.util.find_spec('nats_bench') is None,
                                reason='reading the NATS-Bench folder needs pip nats_bench')

FAKE = Path(__file__).resolve().parent / 'fixtures' / 'nats-tss-fake' / 'NATS-tss-v1_0-3ffb9-simple'
# Cells 0, 11 and 284 of the benchmark, and the 200-epoch test accuracy (%) the API reports for each, mean over
# seeds, on each dataset's test split (tests/test_nb201_bench.py reads the same values).
CELLS = ['4,2,1,2,1,1', '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|',
         '1,1,1,0,2,0']
ACC = {'cifar10': [85.86, 91.58, 88.79], 'cifar100': [52.91, 67.61, 62.14], 'ImageNet16-120': [26.63, 30.17, 32.47]}
SPLIT = {'cifar10': 'ori-test', 'cifar100': 'x-test', 'ImageNet16-120': 'x-test'}
NO_RECORD = '3,3,4,1,3,1'                   # benchmark index 1: not in the test folder
METRICS = 'angle,acc,wlm,synflow'            # the supernet's weights, its BN / loss, a stand-alone network


@pytest.fixture(scope='module')
def supernet(tiny_supernet):
    return tiny_supernet('nb201')


def argv(supernet, save, *extra, truth=('--bench_dir', FAKE)):
    return [str(a) for a in [*truth, '--model_path', supernet / 'checkpoint_epoch_1.pth.tar',
                             '--init_model_path', supernet / 'checkpoint_epoch_0.pth.tar', '--metrics', METRICS,
                             '--max_train_img_size', 32, '--max_val_img_size', 64, '--batch_size', 32,
                             '--standalone_channels', 4, '--standalone_layers', 1, '--resamples', 1000,
                             '--device', 'cpu', '--save', save, *extra]]


def cells_file(tmp_path, cells):
    path = tmp_path / 'cells.txt'
    path.write_text('# benchmark cells\n' + '\n'.join(cells) + '\n')
    return path


def test_cells_come_from_a_seeded_sample_a_file_and_arch_strings(tmp_path):
    space = get_space('nb201')
    cells = select_cells(4, 7, cells_file(tmp_path, CELLS[:2]), [CELLS[2], CELLS[0]], space)
    sample = [tuple(c) for c in nb201.sample_candidates(4, 7)]
    assert [c.candidate for c in cells] == sample + [(4, 2, 1, 2, 1, 1), (3, 3, 4, 0, 3, 4), (1, 1, 1, 0, 2, 0)]
    assert select_cells(4, 7, space=space) == select_cells(4, 7, space=space)[:4]          # seeded
    everything = select_cells(nb201.NUM_CELLS, 0, space=space)
    assert len({c.candidate for c in everything}) == nb201.NUM_CELLS == 15625


@needs_nats
def test_study_reports_the_rank_correlations_of_the_written_scores_per_dataset(supernet, tmp_path, capsys):
    save = tmp_path / 'study'
    args = argv(supernet, save, '--candidates', cells_file(tmp_path, CELLS[:2] + [NO_RECORD]), '--arch', CELLS[2],
                '--skip_missing', '--datasets', 'cifar10,cifar100,imagenet16-120')
    docs = study.main(study.parse_args(args))
    assert set(docs) == set(ACC)
    table = read_scores(save / 'scores' / 'scores.jsonl')
    assert set(table) == set(METRICS.split(','))
    cands = [(4, 2, 1, 2, 1, 1), (3, 3, 4, 0, 3, 4), (1, 1, 1, 0, 2, 0)]
    for dataset, doc in docs.items():
        gt = [json.loads(ln) for ln in (save / f'ground_truth_{dataset}.jsonl').read_text().splitlines()]
        assert [(tuple(g['candidate']), g['index'], round(100 * g['test_acc'], 2)) for g in gt] == list(
            zip(cands, [0, 11, 284], ACC[dataset]))
        assert gt[0]['protocol']['split'] == SPLIT[dataset] and gt[0]['protocol']['epochs'] == 200
        assert gt[0]['protocol']['cells_without_record_left_out'] == 1
        by_metric = {m['metric']: m for m in doc['metrics']}
        for metric, per_cell in table.items():          # by hand: the mean over scoring seeds vs the benchmark
            score = [np.mean(list(per_cell[c].values())) for c in cands]
            with warnings.catch_warnings():                 # a metric constant on 3 cells: NaN, as the report's
                warnings.simplefilter('ignore')
                tau = sps.kendalltau(score, ACC[dataset]).statistic
                rho = sps.spearmanr(score, ACC[dataset]).statistic
            assert by_metric[metric]['cells'] == 3
            assert by_metric[metric]['tau']['value'] == pytest.approx(tau, nan_ok=True)
            assert by_metric[metric]['rho']['value'] == pytest.approx(rho, nan_ok=True)
        text = (save / f'report_{dataset}' / 'report.md').read_text()
        assert f'{dataset} ({SPLIT[dataset]})' in text and f'split `{SPLIT[dataset]}`' in text
        assert '200-epoch' in text and 'is_random=False' in text and (save / f'report_{dataset}' / 'taus.png').exists()
    assert '# NAS-Bench-201 proxy study, ImageNet16-120 (x-test)' in capsys.readouterr().out
    before = (save / 'scores' / 'scores.jsonl').read_bytes()
    study.main(study.parse_args(args[:-1] + ['cifar10']))     # resumes: nothing left to score
    assert (save / 'scores' / 'scores.jsonl').read_bytes() == before


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


@needs_nats
def test_bad_input_is_one_clear_error_and_writes_nothing(supernet, tmp_path, capsys):
    cells = cells_file(tmp_path, CELLS + [NO_RECORD])
    before = snapshot_dir(tmp_path)
    assert cli_exit_code(study, argv(supernet, tmp_path / 's', '--candidates', cells, '--datasets', 'cifar10')) == 2
    assert 'holds no record of 1 of the 4 cells (e.g. benchmark index 1,' in error_line(capsys)
    assert cli_exit_code(study, argv(supernet, tmp_path / 's', '--candidates', cells)) == 2
    assert 'trained on synthetic, which NAS-Bench-201 holds no ground truth of; pass --datasets' in error_line(capsys)
    assert cli_exit_code(study, argv(supernet, tmp_path / 's', '--arch', CELLS[0], '--arch', NO_RECORD,
                                     '--arch', '2,2,2,2,2,2', '--skip_missing', '--datasets', 'cifar10')) == 2
    assert 'holds records of 1 of the 3 cells; a rank correlation needs 3' in error_line(capsys)
    assert cli_exit_code(study, argv(supernet, tmp_path / 's', '--arch', 'DARTS_V2', '--datasets', 'cifar10')) == 2
    assert error_line(capsys).startswith('error: --arch DARTS_V2 is not an NB201 cell')
    assert snapshot_dir(tmp_path) == before


def shipped_values(archs):
    """{arch: {benchmark dataset name: %}} of the given cells, read straight from the shipped CSV."""
    with open(SHIPPED, newline='') as f:
        return {r['arch']: {'cifar10': float(r['cifar10']), 'cifar100': float(r['cifar100']),
                            'ImageNet16-120': float(r['ImageNet16-120'])} for r in csv.DictReader(f) if r['arch'] in archs}


def check_report(save, dataset, cands, acc, table):
    """ground_truth_<dataset>.jsonl holds `acc` (%), the report's tau and rho are scipy's on the scores."""
    gt = [json.loads(ln) for ln in (save / f'ground_truth_{dataset}.jsonl').read_text().splitlines()]
    assert [(tuple(g['candidate']), round(100 * g['test_acc'], 6)) for g in gt] == list(zip(cands, acc))
    doc = json.loads((save / f'report_{dataset}' / 'report.json').read_text())
    for row in doc['metrics']:
        score = [np.mean(list(table[row['metric']][c].values())) for c in cands]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            tau, rho = sps.kendalltau(score, acc).statistic, sps.spearmanr(score, acc).statistic
        assert row['tau']['value'] == pytest.approx(tau, nan_ok=True)
        assert row['rho']['value'] == pytest.approx(rho, nan_ok=True)
    return gt, (save / f'report_{dataset}' / 'report.md').read_text()


def test_stage1_then_the_study_against_the_shipped_ground_truth_by_default(supernet, tmp_path):
    save = tmp_path / 'shipped'
    cands = [tuple(nb201.parse(c)) for c in CELLS]
    study.main(study.parse_args(argv(supernet, save, *sum((['--arch', c] for c in CELLS), []), '--datasets',
                                     'cifar10,imagenet16-120', truth=())))
    truth = shipped_values({nb201.to_arch_string(c) for c in cands})
    table = read_scores(save / 'scores' / 'scores.jsonl')
    for dataset in ('cifar10', 'ImageNet16-120'):
        acc = [truth[nb201.to_arch_string(c)][dataset] for c in cands]
        gt, text = check_report(save, dataset, cands, acc, table)
        assert gt[0]['protocol']['what'] == 'NAS-Bench-201 200-epoch validation accuracy, via NASLib'
        assert 'single seed' in gt[0]['protocol']['seeds'] and gt[0]['protocol']['epochs'] == 200
        assert f'{dataset} (validation accuracy)' in text and 'NAS-Bench-201 200-epoch validation accuracy' in text


def test_stage1_then_the_study_against_a_ground_truth_csv_of_ones_own(supernet, tmp_path, capsys):
    cands = [(1, 2, 3, 4, 0, 1), (3, 3, 3, 3, 3, 3), (4, 0, 2, 1, 1, 0), (2, 2, 0, 0, 4, 4)]
    acc = [61.5, 93.25, 70.0, 80.125]
    path = tmp_path / 'truth.csv'
    path.write_text('arch,cifar10\n' + ''.join(f'{nb201.to_arch_string(c)},{a}\n' for c, a in zip(cands, acc)))
    save = tmp_path / 'own'
    args = argv(supernet, save, '--candidates', cells_file(tmp_path, [nb201.to_arch_string(c) for c in cands]),
                '--datasets', 'cifar10', truth=('--ground_truth', path))
    study.main(study.parse_args(args))
    _, text = check_report(save, 'cifar10', cands, acc, read_scores(save / 'scores' / 'scores.jsonl'))
    assert f'accuracy (%) per cell from {path}' in text
    capsys.readouterr()
    before = snapshot_dir(tmp_path)
    three = sum((['--arch', c] for c in CELLS), [])
    assert cli_exit_code(study, argv(supernet, tmp_path / 's', *three, '--datasets', 'cifar10',
                                     truth=('--ground_truth', path))) == 2
    assert f'{path} holds no record of 3 of the 3 cells (e.g. {nb201.to_arch_string(nb201.parse(CELLS[0]))})' in \
        error_line(capsys)
    assert cli_exit_code(study, argv(supernet, tmp_path / 's', *three, '--datasets', 'cifar100',
                                     truth=('--ground_truth', path))) == 2
    assert 'truth.csv line 1: the header has no column "cifar100"' in error_line(capsys)
    assert cli_exit_code(study, argv(supernet, tmp_path / 's', '--ground_truth', path, *three)) == 2
    assert 'two ground truths: pass one of them' in error_line(capsys)
    assert snapshot_dir(tmp_path) == before
