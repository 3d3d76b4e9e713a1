"""The front door and its pages: every flag documented on its stage's page, the generated flag tables up to
date, --help without noise, the README's Python example runs and computes the flatness of its definition."""
import ast
import importlib
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, doc_files, run_script

sys.path.insert(0, str(ROOT / 'docs'))
import flags  # noqa: E402  (docs/flags.py)

STAGE_PAGES = {'train_supernet.train': 'train_supernet.md', 'evolutionary_search.search': 'evolutionary_search.md',
               'retrain.retrain': 'retrain.md', 'retrain.visualize': 'retrain.md'}
CLIS = ['train_supernet.train', 'evolutionary_search.search', 'retrain.retrain', 'retrain.visualize',
        'proxy_study.ground_truth', 'proxy_study.scores', 'proxy_study.report', 'proxy_study.nb201']


@pytest.mark.parametrize('module', sorted(STAGE_PAGES))
def test_every_flag_of_a_stage_is_on_its_page(module):
    page = (ROOT / 'docs' / STAGE_PAGES[module]).read_text()
    missing = [s for s in flags.option_strings(module) if f'`{s}`' not in page]
    assert not missing, f'docs/{STAGE_PAGES[module]} lacks {missing}; run python3 docs/flags.py --write'


def test_flag_tables_are_those_of_the_parsers():
    stale = [p.name for p in flags.pages() if flags.regenerated(p.read_text()) != p.read_text()]
    assert not stale, f'out of date: {stale}; run python3 docs/flags.py --write'


def test_flag_table_lists_defaults_and_help():
    rows = {r[0]: r for _, group in flags.flag_rows(flags.parser_of('train_supernet.train')) for r in group}
    assert rows['`--learning_rate`'][1:] == ('`0.025`', 'initial SGD learning rate')
    assert rows['`--channels_last`, `--no-channels_last`'][1] == 'on'
    assert rows['`--resume`'][1] == ''                       # no default: the help says what happens without it


@pytest.mark.parametrize('module', CLIS)
def test_help_states_each_default_once_and_never_none(module):
    text = importlib.import_module(module).get_args_parser().format_help()
    flat = ' '.join(text.split())
    assert '(default: None)' not in flat
    assert 'SPEC' not in text
    for entry in re.split(r'\n  (?=-)', text):                # one entry per flag
        assert len(re.findall(r'\(default: ', ' '.join(entry.split()))) <= 1, entry


def test_required_flags_and_defaults_stated_in_the_help_get_no_default_suffix():
    import utils
    p = utils.ArgumentParser(prog='x')
    p.add_argument('--a', required=True, default='q', help='needed')
    p.add_argument('--b', default=3, help='three (default: 3)')
    p.add_argument('--c', default=4, help='four')
    p.add_argument('--d', default=None, help='nothing')
    flat = ' '.join(p.format_help().split())
    assert 'needed (default' not in flat and flat.count('(default: 3)') == 1
    assert 'four (default: 4)' in flat and 'nothing (default' not in flat


def test_no_spec_references_in_the_docs():
    for path in doc_files():
        assert 'SPEC' not in path.read_text(), path


def test_readme_is_short_and_its_layout_fits_a_screen():
    lines = (ROOT / 'README.md').read_text().splitlines()
    assert len(lines) <= 250
    start = lines.index('## Layout')
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith('## '))
    assert end - start <= 40


def _readme_python():
    text = (ROOT / 'README.md').read_text()
    section = text[text.index('## Use from Python'):]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_readme_python_example_scores_the_flatness_of_its_definition(tmp_path):
    run_script('train_supernet/train.py', '--dataset', 'synthetic', '--init_channels', 4, '--layers', 3,
               '--epochs', 1, '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 64, '--no-augment',
               '--save', tmp_path / 'sn')
    code = _readme_python().replace('runs/supernet-fmnist/checkpoint_epoch_2.pth.tar',
                                    str(tmp_path / 'sn' / 'checkpoint_epoch_1.pth.tar'))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    (l1, l2, l3), (s1, s2, s3) = result['losses'], (0.001, 0.003, 0.006)
    poor = abs(l1 / s1) + abs((l2 - l1) / (s2 - s1)) + abs((l3 - l2) / (s3 - s2))
    assert result['poor'] == pytest.approx(poor, rel=1e-9)
    assert result['score'] == result['wlm'] == pytest.approx(1 / (poor + 1e-5), rel=1e-9)
    assert all(2.0 < loss < 2.7 for loss in result['losses'])     # about ln 10: 10 classes, one epoch
