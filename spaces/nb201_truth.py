"""Ground truth of NAS-Bench-201 from a CSV file: one row per cell, an `arch` column and one accuracy
column (percent) per dataset.

    truth = read_truth()                                   # the shipped file, every dataset
    truth = read_truth('my.csv', ['cifar10'])              # a file of one's own, one dataset
    truth.accuracy('cifar100')                             # numpy array in row order
    truth.value((3, 3, 4, 0, 3, 4), 'imagenet16-120')      # one cell

The shipped file (spaces/nb201_data/, Apache-2.0, from NASLib) holds the validation accuracy of all 15,625
cells after the benchmark's 200-epoch training, one training run per cell: see spaces/nb201_data/README.md.
Dataset columns are named as the study names the datasets (cifar10, cifar100, imagenet16-120); the header
may spell them as the benchmark does (`ImageNet16-120`): case does not matter. Other columns are ignored.
Every row is checked: a cell that is not an NB201 arch string, a missing column, a repeated cell or a value
that is not a finite number ends with one UserError naming the file, the line and the fix.
"""
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spaces import nb201
from utils import UserError

DATASETS = ('cifar10', 'cifar100', 'imagenet16-120')
SHIPPED = Path(__file__).resolve().parent / 'nb201_data' / 'nb201_val_accuracy.csv'
PROTOCOL = 'NAS-Bench-201 200-epoch validation accuracy, via NASLib'
SHIPPED_PROTOCOL = {
    'benchmark': 'NAS-Bench-201 (Dong & Yang, ICLR 2020)', 'what': PROTOCOL,
    'split': 'valid (cifar10: the cifar10-valid setting, trained on 25k images, evaluated on the other 25k of '
             'the training set; cifar100 and ImageNet16-120: their validation split)',
    'epochs': 200, 'seeds': 'one training run per cell (single seed; its noise is not known from this file)',
    'source': 'NASLib (automl/NASLib, Apache-2.0), NAS-Bench-Suite-Zero records, val_accuracy field'}
EXAMPLE = 'arch,cifar10,cifar100,imagenet16-120'


@dataclass
class TruthTable:
    path: str
    candidates: list            # 6-int tuples, in row order
    lines: list                 # the file's line number of each row
    acc: dict                   # dataset -> np.ndarray (percent), in row order

    def __post_init__(self):
        self._row = {c: i for i, c in enumerate(self.candidates)}

    @property
    def datasets(self):
        return list(self.acc)

    def has(self, candidate):
        return tuple(candidate) in self._row

    def row(self, candidate):
        return self._row[tuple(candidate)]

    def value(self, candidate, dataset):
        return float(self.acc[dataset][self.row(candidate)])

    def accuracy(self, dataset):
        return self.acc[dataset]

    def protocol(self):
        """What one value is: the shipped file's protocol, or only its path for another file."""
        if Path(self.path).resolve() == SHIPPED:
            return dict(SHIPPED_PROTOCOL)
        return {'what': f'accuracy (%) per cell from {self.path}', 'seeds': 'one value per cell'}


def study_dataset(name):
    """A dataset name (ours or the benchmark's spelling) -> ours; UserError for others."""
    if name.strip().lower() in DATASETS:
        return name.strip().lower()
    raise UserError(f'NAS-Bench-201 has no ground truth for dataset {name!r}; choose one of {", ".join(DATASETS)}')


def _columns(path, header, datasets):
    """{'arch': i, dataset: i} from the header row; UserError for a missing or repeated column."""
    names = [h.strip().lower() for h in header]
    wanted = ['arch'] + list(datasets)
    for name in wanted:
        if names.count(name) != 1:
            how = 'has no' if name not in names else 'repeats the'
            raise UserError(f'{path} line 1: the header {how} column "{name}" (it has {", ".join(header) or "none"});'
                            f' the first line names the columns, e.g. {EXAMPLE}')
    return {name: names.index(name) for name in wanted}


def _number(path, n, dataset, text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f'{path} line {n}: the {dataset} value {text!r} is not a finite number (an accuracy in '
                        'percent); fix that line')
    return value


def _parse_row(path, n, row, cols):
    """(candidate, {dataset: value}) of one data row."""
    if len(row) <= max(cols.values()):
        raise UserError(f'{path} line {n} has {len(row)} field(s), the header {max(cols.values()) + 1} or more; '
                        'give every row a value in every column')
    try:
        cand = tuple(nb201.from_arch_string(row[cols['arch']]))
    except nb201.NB201Error as e:
        raise UserError(f'{path} line {n}: {row[cols["arch"]]!r} is not an NB201 cell ({e}); fix that line')
    return cand, {d: _number(path, n, d, row[i]) for d, i in cols.items() if d != 'arch'}


def _rows(path):
    """(header, [(line number, row)]) of the non-blank rows."""
    try:
        with open(path, newline='') as f:
            reader = csv.reader(f)
            table = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f'cannot read the ground-truth file {path} ({getattr(e, "strerror", None) or e}); pass a '
                        f'CSV file such as {SHIPPED}')
    table = [(n, row) for n, row in table if any(field.strip() for field in row)]
    if not table:
        raise UserError(f'{path} is empty; a ground-truth file starts with a header line such as {EXAMPLE}')
    return table[0][1], table[1:]


def read_truth(path=None, datasets=DATASETS):
    """TruthTable of `datasets` (study names) from a CSV file (default: the shipped one)."""
    path = str(path or SHIPPED)
    datasets = list(dict.fromkeys(study_dataset(d) for d in datasets))
    header, rows = _rows(path)
    cols = _columns(path, header, datasets)
    cands, lines, values, seen = [], [], {d: [] for d in datasets}, {}
    for n, row in rows:
        cand, vals = _parse_row(path, n, row, cols)
        if cand in seen:
            raise UserError(f'{path} line {n} repeats the cell of line {seen[cand]} ({nb201.to_arch_string(cand)}); '
                            'keep one row per cell')
        seen[cand] = n
        cands.append(cand)
        lines.append(n)
        for d in datasets:
            values[d].append(vals[d])
    if not cands:
        raise UserError(f'{path} has a header but no rows; add one row per cell')
    return TruthTable(path, cands, lines, {d: np.array(v, float) for d, v in values.items()})
