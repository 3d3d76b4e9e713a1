"""Ground truth from NAS-Bench-201 (the topology space of NATS-Bench), read with its own `nats_bench` API.

    bench = Benchmark('/data/NATS-tss-v1_0-3ffb9-simple')        # pip install nats_bench
    truths = bench.ground_truth([[3, 3, 4, 0, 3, 4], ...], ['cifar10', 'cifar100', 'imagenet16-120'])
    truths['cifar10'][0].test_accuracy                            # percent

The benchmark's users most often fall into three pitfalls; none can happen here:
- epochs: the API's default is `hp='12'` (the 12-epoch budget); the ground truth is the 200-epoch
  training, so `hp='200'` is fixed, and every record is checked to end after epoch 200;
- seeds: the API's default `is_random=True` returns one randomly chosen seed per call (so the numbers
  change between runs); `is_random=False`, the mean over all seeds the benchmark trained, is fixed;
- splits: each dataset names its test split differently. `cifar10` is trained on train + valid and
  tested on the CIFAR-10 test set (`ori-test`); `cifar100` and `ImageNet16-120` are trained on their
  training set and tested on the half of their test set the benchmark calls `x-test` (their `ori-test`
  is valid + test). The split is stated in every record.

Without the benchmark's folder, spaces/nb201_truth.py reads a CSV of accuracies per cell instead (the
repository ships the 200-epoch validation accuracies of all cells, via NASLib).

`nats_bench` is imported only here, only when a Benchmark is opened. The API keeps every record it
read in memory (no public way to drop one), about as much as the record file's unpacked size.
"""
import os
from dataclasses import asdict, dataclass

from spaces import nb201
from utils import UserError

HP = '200'                  # training epochs of the ground truth
EPOCHS = 200
# Our dataset names (data.py) -> the benchmark's.
DATASETS = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'imagenet16-120': 'ImageNet16-120'}
# The benchmark's name of the split that holds each dataset's test accuracy.
TEST_SPLIT = {'cifar10': 'ori-test', 'cifar100': 'x-test', 'ImageNet16-120': 'x-test'}
FOLDER_NAME = 'NATS-tss-v1_0-3ffb9-simple'
CHANNELS, LAYERS = 16, 5    # the benchmark's network: C = 16, N = 5 cells per stage


@dataclass(frozen=True)
class GroundTruth:
    """One cell's 200-epoch result on one dataset, averaged over the benchmark's seeds."""
    index: int                # benchmark index
    arch: str                 # arch string
    candidate: list           # 6 op codes
    dataset: str              # the benchmark's dataset name
    split: str                # where test_accuracy was measured
    test_accuracy: float      # percent
    test_loss: float
    seeds: list               # the seeds averaged
    epochs: int
    params_m: float           # parameters (millions), as the benchmark counts them
    flops_m: float            # FLOPs (millions) for one image

    def to_dict(self):
        return asdict(self)


def benchmark_dataset(name):
    """Our dataset name (or the benchmark's) -> the benchmark's; UserError for others."""
    if name in TEST_SPLIT:
        return name
    if name.lower() in DATASETS:
        return DATASETS[name.lower()]
    raise UserError(f'NAS-Bench-201 has no ground truth for dataset {name!r}; choose one of {", ".join(DATASETS)}')


class Benchmark:
    """An opened `NATS-tss-v1_0-3ffb9-simple` folder (fast mode: one file per cell, read when asked)."""

    def __init__(self, folder):
        try:
            from nats_bench import create
        except ImportError:
            raise UserError('reading NAS-Bench-201 needs the nats_bench package: python3 -m pip install nats_bench')
        if not os.path.isfile(os.path.join(folder, 'meta.pickle.pbz2')):
            raise UserError(f'{folder} is not a NATS-Bench topology folder (no meta.pickle.pbz2); pass the '
                            f'unpacked {FOLDER_NAME} folder')
        self.folder = folder
        try:
            self.api = create(folder, 'tss', fast_mode=True, verbose=False)
            self.index = nb201.BenchmarkIndex(self.api.meta_archs)
        except Exception as e:      # nats_bench unpickles the file: a damaged one raises anything
            raise UserError(f'{folder}/meta.pickle.pbz2 cannot be read as NATS-Bench\'s meta data '
                            f'({type(e).__name__}: {str(e)[:80]}); pass an intact unpacked {FOLDER_NAME} folder') \
                from None

    def _results(self, index):
        try:
            return self.api.query_meta_info_by_index(index, hp=HP)
        except AssertionError:          # fast mode asserts that the cell's file exists
            raise UserError(f'{self.folder} has no record of cell {index} ({self.api.meta_archs[index]}); the '
                            f'full {FOLDER_NAME} folder has all {nb201.NUM_CELLS}')

    def has_record(self, candidate):
        """Whether the folder holds the cell's record (the full folder holds all; a partial copy, such as the
        tests' fixture, does not)."""
        try:
            self._results(self.index.index(candidate))
        except UserError:
            return False
        return True

    def record(self, candidate, dataset):
        """GroundTruth of one cell (6 ints) on one dataset."""
        name = benchmark_dataset(dataset)
        index = self.index.index(candidate)
        results = self._results(index)
        test = results.get_metrics(name, TEST_SPLIT[name], iepoch=None, is_random=False)
        if int(test['iepoch']) + 1 != EPOCHS:
            raise UserError(f'{self.folder}: cell {index} on {name} ends after epoch {int(test["iepoch"]) + 1}, '
                            f'not {EPOCHS}; the folder is not the 200-epoch benchmark')
        cost = results.get_compute_costs(name)
        return GroundTruth(index=index, arch=nb201.to_arch_string(candidate), candidate=list(candidate),
                           dataset=name, split=TEST_SPLIT[name], test_accuracy=float(test['accuracy']),
                           test_loss=float(test['loss']), seeds=list(results.get_dataset_seeds(name)),
                           epochs=EPOCHS, params_m=float(cost['params']), flops_m=float(cost['flops']))

    def ground_truth(self, candidates, datasets=tuple(DATASETS)):
        """{benchmark dataset name: [GroundTruth per candidate, in order]}: what the proxy study needs."""
        return {benchmark_dataset(d): [self.record(c, d) for c in candidates] for d in datasets}


def ground_truth(folder, candidates, datasets=tuple(DATASETS)):
    """Benchmark(folder).ground_truth(candidates, datasets): the one call for the proxy study."""
    return Benchmark(folder).ground_truth(candidates, datasets)
