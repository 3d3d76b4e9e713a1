"""Ground truth from NAS-Bench-201, read with the real nats_bench package from the NATS-Bench project's
own test folder (tests/fixtures/nats-tss-fake, MIT licence): records of cells 0, 11 and 284."""
from pathlib import Path

import pytest

from spaces import nb201
from utils import UserError

pytest.importorskip('nats_bench')
from spaces.nb201_bench import Benchmark, ground_truth  # noqa: E402

FAKE = str(Path(__file__).resolve().parent / 'fixtures' / 'nats-tss-fake' / 'NATS-tss-v1_0-3ffb9-simple')
CELL_11 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|'


@pytest.fixture(scope='module')
def bench():
    return Benchmark(FAKE)


def test_cell_11_reads_the_published_200_epoch_cifar10_accuracy():
    truth = ground_truth(FAKE, [nb201.from_arch_string(CELL_11)], ['cifar10'])
    (rec,) = truth['cifar10']
    assert rec.index == 11 and rec.arch == CELL_11
    assert round(rec.test_accuracy, 2) == 91.58
    assert rec.split == 'ori-test' and rec.epochs == 200 and rec.seeds == [777, 888, 999]


def test_three_cells_exactly_as_the_api_reports_them_at_200_epochs_mean_over_seeds(bench):
    cands = [bench.index.candidate(i) for i in (0, 11, 284)]
    truth = bench.ground_truth(cands)
    assert set(truth) == {'cifar10', 'cifar100', 'ImageNet16-120'}
    for dataset, records in truth.items():
        for cand, rec in zip(cands, records):
            assert rec.candidate == cand
            api = bench.api.get_more_info(rec.index, dataset, hp='200', is_random=False)
            assert rec.test_accuracy == api['test-accuracy'] and rec.test_loss == api['test-loss']
            # the pitfalls: the 12-epoch default, a single seed, the valid split
            assert rec.test_accuracy != bench.api.get_more_info(rec.index, dataset, hp='12',
                                                                is_random=False)['test-accuracy']
            per_seed = [bench.api.get_more_info(rec.index, dataset, hp='200', is_random=s)['test-accuracy']
                        for s in rec.seeds]
            assert rec.test_accuracy == pytest.approx(sum(per_seed) / len(per_seed), rel=1e-12)
            assert rec.split == ('ori-test' if dataset == 'cifar10' else 'x-test')
    assert [round(r.test_accuracy, 2) for r in truth['cifar100']] == [52.91, 67.61, 62.14]
    assert [round(r.test_accuracy, 2) for r in truth['ImageNet16-120']] == [26.63, 30.17, 32.47]
    assert [round(r.test_accuracy, 2) for r in truth['cifar10']] == [85.86, 91.58, 88.79]


def test_our_dataset_names_map_to_the_benchmarks(bench):
    cand = bench.index.candidate(284)
    assert bench.record(cand, 'imagenet16-120') == bench.record(cand, 'ImageNet16-120')
    with pytest.raises(UserError, match='no ground truth for dataset'):
        bench.record(cand, 'fashion-mnist')


def test_missing_records_and_folders_are_one_clear_error(bench, tmp_path):
    with pytest.raises(UserError, match='has no record of cell 5 .*all 15625'):
        bench.record(bench.index.candidate(5), 'cifar10')
    with pytest.raises(UserError, match='not a NATS-Bench topology folder'):
        Benchmark(str(tmp_path))
