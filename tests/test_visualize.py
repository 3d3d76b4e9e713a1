"""retrain/visualize.py through its CLI: bad input and a full disk end with one error line."""
import shutil
import subprocess

import pytest

import genotypes
from conftest import assert_refused, check_refusal, error_lines, refusal_base, refused_in_copy, stage_cli
from retrain import visualize
from retrain.drawing import cell_dot


@pytest.fixture(scope='module')
def bad_input_runs(tmp_path_factory):
    """A finished stage-3 run (its model_best.pth.tar: a binary file) (conftest.refusal_base)."""
    return refusal_base(tmp_path_factory.mktemp('refusals'), retrain=True)


# (id, argv given the fixture's base folder, text the one error line must hold)
REFUSALS = [
    ('binary --arch visualize', lambda b: ['--arch', b / 'retrain' / 'model_best.pth.tar',
                                          '--out', b / 'out' / 'cell'], 'not a genotype JSON'),
]


@pytest.mark.parametrize('argv, message', [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refused_with_one_line_and_nothing_changed(bad_input_runs, argv, message, capsys):
    check_refusal(visualize, bad_input_runs, argv(bad_input_runs), message, capsys)


def test_cell_diagram_on_a_full_disk(tmpfs, capsys):
    fs = tmpfs('4k')
    (fs / 'filler').write_bytes(b'\0' * 4096)
    code, err = stage_cli(visualize, ['--arch', 'DARTS_V2', '--out', fs / 'cell'], capsys)
    # The folder is claimed for drawings (its run.json) before any drawing: that first write fails; the lock file
    # is empty.
    assert code == 2 and error_lines(err) == [f'error: {fs / "run.json"} was not written: the disk is full; '
                                              'free space (or choose a writable --save) and resume: the files written '
                                              'before are intact'], err
    assert sorted(p.name for p in fs.iterdir()) == ['.lock', 'filler'] and (fs / '.lock').read_bytes() == b''


# --- bad input, by kind: exit 2, one error line, every file of every run unchanged ------------------------------

def _genotype_file(text):
    return lambda b: (b / 'cell.json').write_text(text)


# (id, argv given the copy b of foreign_runs, text of the one error line, prepare(b) or None)
VISUALIZE_BAD_INPUTS = [
    # drawings into the folder of another kind of run (a retrain run holds drawings of its own cell)
    ('--out into a retrain run', lambda b: ['--arch', 'PDARTS', '--out', b / 'retrain' / 'cell'],
     'holds a stage-3 retraining run', None),
    ('--out into a supernet run', lambda b: ['--arch', 'PDARTS', '--out', b / 'supernet' / 'cell'],
     'holds a stage-1 supernet run', None),
    ('--out into a search run', lambda b: ['--arch', 'PDARTS', '--out', b / 'search' / 'cell'],
     'holds a stage-2 evolutionary search', None),
    ('--out into a ground truth', lambda b: ['--arch', 'PDARTS', '--out', b / 'gt' / 'cell'],
     'holds proxy-study ground truth', None),
    ('--out inside a file', lambda b: ['--arch', 'PDARTS', '--out', b / 'afile' / 'cell'],
     'is an existing file, not a directory', None),
    # genotypes that are not one
    ('binary --arch', lambda b: ['--arch', b / 'retrain' / 'model_best.pth.tar', '--out', b / 'out' / 'cell'],
     'not a genotype JSON', None),
    ('unknown --arch name', lambda b: ['--arch', 'NO_SUCH_CELL', '--out', b / 'out' / 'cell'],
     "unknown genotype 'NO_SUCH_CELL'", None),
    ('--arch JSON without cells', lambda b: ['--arch', b / 'cell.json', '--out', b / 'out' / 'cell'],
     'genotype', _genotype_file('{"genotype": {"normal": 3}}')),
    ('--arch JSON that is a list', lambda b: ['--arch', b / 'cell.json', '--out', b / 'out' / 'cell'],
     'genotype', _genotype_file('[1, 2, 3]')),
]


@pytest.mark.parametrize('argv, message, prepare', [c[1:] for c in VISUALIZE_BAD_INPUTS],
                         ids=[c[0] for c in VISUALIZE_BAD_INPUTS])
def test_bad_input_is_refused_before_anything_is_written(foreign_runs, argv, message, prepare, tmp_path, capsys):
    code, before, after = refused_in_copy(visualize, foreign_runs, tmp_path, argv, prepare)
    assert_refused(code, capsys.readouterr().err, message, before, after)


@pytest.mark.skipif(shutil.which('dot') is None, reason='graphviz dot is not installed')
@pytest.mark.parametrize('name', sorted(genotypes.GENOTYPES))
def test_intermediate_nodes_are_drawn_in_their_order_from_left_to_right(name):
    """Laid out by graphviz (`dot -Tplain`: "node NAME X Y ..."), the nodes 0, 1, 2, 3 of both cells have
    increasing x, whatever edges they share."""
    geno = genotypes.GENOTYPES[name]
    for which in ('normal', 'reduce'):
        ops = getattr(geno, which)
        plain = subprocess.run(['dot', '-Tplain'], input=cell_dot(ops, getattr(geno, f'{which}_concat'), which),
                               capture_output=True, text=True, check=True).stdout
        x = {f[1].strip('"'): float(f[2]) for f in (ln.split() for ln in plain.splitlines()) if f[0] == 'node'}
        steps = [str(i) for i in range(len(ops) // 2)]
        assert [x[s] for s in steps] == sorted(x[s] for s in steps) and len({x[s] for s in steps}) == len(steps), \
            (name, which, {s: x[s] for s in steps})
