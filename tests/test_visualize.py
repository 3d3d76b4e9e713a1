"""retrain/visualize.py through its CLI."""
import pytest

from conftest import assert_refused, refused_in_copy
from retrain import visualize


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
