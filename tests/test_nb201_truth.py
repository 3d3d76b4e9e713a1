"""The NAS-Bench-201 ground truth from a CSV file (spaces/nb201_truth.py): the shipped validation accuracies of
all 15,625 cells, and one clear error for each kind of bad row."""
import csv
from pathlib import Path

import pytest

from conftest import cli_exit_code, snapshot_dir
from proxy_study import nb201_datafree
from spaces import nb201
from spaces.nb201_truth import DATASETS, SHIPPED, read_truth
from utils import UserError

CELL_A = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'
CELL_B = '|none~0|+|skip_connect~0|none~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|'
CELL_C = '|avg_pool_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|none~0|skip_connect~1|nor_conv_3x3~2|'


@pytest.fixture(scope='module')
def shipped():
    return read_truth()


def raw_rows():
    """The shipped file's rows as text, read without the reader."""
    lines = SHIPPED.read_text().splitlines()
    return lines[0].split(','), [line.split(',') for line in lines[1:]]


def test_the_shipped_file_holds_every_cell_once_with_its_three_accuracies(shipped):
    header, rows = raw_rows()
    assert header == ['arch', 'cifar10', 'cifar100', 'ImageNet16-120']
    assert len(shipped.candidates) == len(rows) == nb201.NUM_CELLS == 15625
    assert set(shipped.candidates) == {tuple(c) for c in nb201.all_candidates()}
    assert shipped.datasets == list(DATASETS)
    for i in (0, 1, 777, 9000, 15624):              # values read back from the raw text, by the row's arch string
        arch, c10, c100, im = rows[i]
        cand = tuple(nb201.from_arch_string(arch))
        assert shipped.lines[shipped.row(cand)] == i + 2
        assert [shipped.value(cand, d) for d in DATASETS] == [float(c10), float(c100), float(im)]
    assert 'validation accuracy, via NASLib' in shipped.protocol()['what']
    assert 'single seed' in shipped.protocol()['seeds']


def write_csv(path, header, rows):
    with open(path, 'w', newline='') as f:
        csv.writer(f).writerows([header] + rows)
    return path


def test_a_file_of_ones_own_with_the_benchmarks_or_our_dataset_spelling(tmp_path):
    path = write_csv(tmp_path / 'mine.csv', ['Arch', 'IMAGENET16-120', 'extra'],
                     [[CELL_A, '40.5', 'x'], [CELL_B, '12', 'y']])
    truth = read_truth(path, ['ImageNet16-120'])
    assert truth.datasets == ['imagenet16-120'] and not truth.has([0] * 6)
    assert truth.value(nb201.from_arch_string(CELL_B), 'imagenet16-120') == 12.0
    assert 'from ' + str(path) in truth.protocol()['what']


BAD = {    # kind: (rows after the header, what the message says)
    'not a cell': ([[CELL_A, '1', '2', '3'], ['|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|', '1', '2', '3']],
                   'line 3: \'|conv~0|'),
    'repeated cell': ([[CELL_A, '1', '2', '3'], [CELL_B, '1', '2', '3'], [CELL_A, '4', '5', '6']],
                      'line 4 repeats the cell of line 2'),
    'not a number': ([[CELL_A, '1', 'n/a', '3']], 'line 2: the cifar100 value \'n/a\' is not a finite number'),
    'infinite': ([[CELL_A, '1', '2', 'inf']], 'line 2: the imagenet16-120 value \'inf\' is not a finite number'),
    'short row': ([[CELL_A, '1', '2']], 'line 2 has 3 field(s)'),
}


@pytest.mark.parametrize('kind', sorted(BAD))
def test_each_bad_row_is_one_error_naming_file_line_and_fix(tmp_path, capsys, kind):
    rows, message = BAD[kind]
    path = write_csv(tmp_path / 'bad.csv', ['arch', 'cifar10', 'cifar100', 'ImageNet16-120'], rows)
    with pytest.raises(UserError, match='fix that line|keep one row per cell|give every row') as e:
        read_truth(path)
    assert str(path) in str(e.value) and message in str(e.value)
    save = tmp_path / 'save'
    before = snapshot_dir(tmp_path)
    assert cli_exit_code(nb201_datafree, ['--ground_truth', path, '--tiny', '--save', save]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], err
    assert snapshot_dir(tmp_path) == before and not save.exists()


def test_a_missing_column_an_empty_file_and_a_missing_file_are_one_error(tmp_path):
    path = write_csv(tmp_path / 'two.csv', ['arch', 'cifar10', 'cifar100'], [[CELL_A, '1', '2']])
    with pytest.raises(UserError, match=r'two.csv line 1: the header has no column "imagenet16-120"'):
        read_truth(path)
    assert read_truth(path, ['cifar100']).value(nb201.from_arch_string(CELL_A), 'cifar100') == 2.0
    with pytest.raises(UserError, match='repeats the column "cifar10"'):
        read_truth(write_csv(tmp_path / 'rep.csv', ['arch', 'cifar10', 'CIFAR10'], [[CELL_A, '1', '2']]), ['cifar10'])
    (tmp_path / 'empty.csv').write_text('\n')
    with pytest.raises(UserError, match='empty.csv is empty'):
        read_truth(tmp_path / 'empty.csv')
    with pytest.raises(UserError, match='cannot read the ground-truth file'):
        read_truth(tmp_path / 'nothing.csv')
    with pytest.raises(UserError, match='no ground truth for dataset'):
        read_truth(path, ['mnist'])
    assert Path(SHIPPED).with_name('LICENSE').read_text().startswith(' ' * 33 + 'Apache License')
