"""Stages 1 and 2 with --space nb201, end to end on generated data (CPU, seconds)."""
import json

import pytest
import torch

from conftest import cli_exit_code, snapshot_dir
from evolutionary_search import search
from spaces import nb201
from train_supernet import train

TINY_SUPERNET = ['--space', 'nb201', '--dataset', 'synthetic', '--init_channels', 4, '--layers', 1,
                 '--batch_size', 32, '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 32,
                 '--seed', 1, '--epochs', 1]
TINY_SEARCH = ['--max_epochs', 3, '--population_num', 6, '--select_num', 3, '--mutation_num', 2,
               '--crossover_num', 2, '--max_train_img_size', 32, '--max_val_img_size', 64, '--batch_size', 32,
               '--test_batch_size', 64, '--seed', 7]


@pytest.fixture(scope='module')
def supernet(tmp_path_factory):
    run = tmp_path_factory.mktemp('nb201') / 'supernet'
    train.main(train.parse_args([str(a) for a in TINY_SUPERNET + ['--save', run]]))
    return run


def ckpts(run):
    return ['--init_model_path', run / 'checkpoint_epoch_0.pth.tar', '--model_path', run / 'checkpoint_epoch_1.pth.tar']


def test_stage1_writes_an_nb201_supernet(supernet):
    ckpt = torch.load(supernet / 'checkpoint_epoch_1.pth.tar', weights_only=True)
    assert ckpt['space'] == 'nb201' and ckpt['layers'] == 1 and ckpt['init_channels'] == 4
    keys = ckpt['state_dict']
    assert 'cells.0.edges.5.ops.3.op.1.weight' in keys and 'cells.1.downsample.1.weight' in keys
    assert keys['classifier.weight'].shape == (10, 16)             # 4C channels at the head
    init = torch.load(supernet / 'checkpoint_epoch_0.pth.tar', weights_only=True)['state_dict']
    assert not torch.equal(init['stem.0.weight'], keys['stem.0.weight'])     # it trained


def test_layers_default_depends_on_the_space():
    assert train.parse_args(['--space', 'nb201']).layers == 5
    assert train.parse_args([]).layers == 8 and train.parse_args([]).space == 'darts'


@pytest.mark.parametrize('metric', ['angle+wlm', 'acc'])
def test_search_end_to_end(supernet, tmp_path, metric):
    out = tmp_path / 'search'
    res = search.main(search.parse_args([str(a) for a in ckpts(supernet) + TINY_SEARCH +
                                         ['--metric', metric, '--wlm_weight', 0.5, '--save', out]]))
    doc = json.loads((out / 'genotype.json').read_text())
    assert doc['space'] == 'nb201' and doc['arch'] == nb201.to_arch_string(doc['candidate']) == res['genotype']
    assert len(doc['top10']) == 10 and all(t['arch'] == nb201.to_arch_string(t['candidate']) for t in doc['top10'])
    scores = [t['score'] for t in doc['top10']]
    assert scores == sorted(scores, reverse=True) and doc['score'] == scores[0]
    state = json.loads((out / 'search_checkpoint.json').read_text())['evolution']
    assert len(state['scores']) == 18 and all(len(k.split(',')) == 6 for k in state['scores'])
    assert json.loads((out / 'args.json').read_text())['space'] == 'nb201'


def test_scoring_given_cells(supernet, tmp_path, capsys):
    cells = tmp_path / 'cells.txt'
    cells.write_text('# two cells\n3,3,4,0,3,4\n|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|'
                     'nor_conv_1x1~1|none~2|\n')
    results = search.main(search.parse_args([str(a) for a in ckpts(supernet) + TINY_SEARCH + [
        '--metric', 'angle+acc', '--acc_weight', 1, '--candidates', cells,
        '--arch', '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|',
        '--save', tmp_path / 'score']]))
    assert [r['candidate'] for r in results] == [[3, 3, 4, 0, 3, 4], [1, 1, 1, 0, 2, 0], [3, 3, 4, 0, 3, 4]]
    assert results[0]['score'] == results[2]['score']          # the same cell, the same score
    for r in results:
        assert r['score'] == pytest.approx(r['angle_normalized'] + r['acc'])


def test_space_mismatches_are_one_clear_error(supernet, tmp_path, capsys):
    before = snapshot_dir(supernet)
    code = cli_exit_code(search, ckpts(supernet) + ['--space', 'darts', '--save', tmp_path / 's'])
    err = capsys.readouterr().err
    assert code == 2 and 'holds a nb201 supernet, not darts' in err and len(err.strip().splitlines()) == 1
    code = cli_exit_code(search, ckpts(supernet) + ['--arch', 'DARTS_V2', '--save', tmp_path / 's2'])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --arch DARTS_V2 is not an NB201 cell")
    darts_flags = TINY_SUPERNET[2:] + ['--layers', 3, '--epochs', 2]
    code = cli_exit_code(train, darts_flags + ['--resume', supernet / 'last.pth.tar'])
    err = capsys.readouterr().err
    assert code == 2 and 'is a nb201 supernet; resume it with --space nb201' in err
    assert snapshot_dir(supernet) == before


@pytest.mark.slow
def test_fashion_mnist_nb201_supernet_learns_and_the_search_runs(readme_runs):
    """The README's offline NB201 commands (C=8, N=1, 2 epochs of 20,000 images, then a small search);
    a slow test: it shares the README fixture with the other offline commands."""
    from utils import read_metrics
    sandbox, _ = readme_runs
    recs = read_metrics(sandbox / 'runs' / 'nb201-fmnist' / 'metrics.jsonl')
    assert [r['epoch'] for r in recs] == [1, 2]
    assert recs[-1]['valid_acc'] > 0.5, recs                # random paths, 10 classes
    doc = json.loads((sandbox / 'runs' / 'nb201-search-fmnist' / 'genotype.json').read_text())
    assert doc['space'] == 'nb201' and doc['arch'] == nb201.to_arch_string(doc['candidate'])
    assert {'angle', 'wlm'} <= set(doc['components'])
