"""retrain/visualize.py through its CLI: bad input and a full disk end with one error line."""
import pytest

from conftest import error_lines, refusal_base, snapshot_dir, stage_cli
from retrain import visualize


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
    before = snapshot_dir(bad_input_runs)
    code, err = stage_cli(visualize, argv(bad_input_runs), capsys)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and message.format(b=bad_input_runs) in lines[0], err
    assert snapshot_dir(bad_input_runs) == before
    assert not (bad_input_runs / 'out').exists() and not (bad_input_runs / 'nothing').exists()


def test_cell_diagram_on_a_full_disk(tmpfs, capsys):
    fs = tmpfs('4k')
    (fs / 'filler').write_bytes(b'\0' * 4096)
    code, err = stage_cli(visualize, ['--arch', 'DARTS_V2', '--out', fs / 'cell'], capsys)
    assert code == 2 and error_lines(err) == [f'error: {fs / "cell_normal.dot"} was not written: the disk is full; '
                                              'free space (or choose a writable --save) and resume: the files written '
                                              'before are intact'], err
    assert sorted(p.name for p in fs.iterdir()) == ['filler']
