"""demo.py: its command-line contract, its stages, and a report built from the stages' public outputs only."""
import json

import pytest
import torch

import demo
import genotypes
from evolutionary_search import metrics
from conftest import cli_exit_code, run_script
from counting import count_macs, count_parameters
from data import synthetic_arrays
from spaces import get_space
from spaces.darts_network import NetworkCIFAR
from utils import UserError


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


def test_bad_input_is_one_error_line_with_exit_2(tmp_path, capsys):
    assert cli_exit_code(demo, ['--tiny', '--bogus']) == 2
    assert '--bogus' in one_error_line(capsys)
    taken = tmp_path / 'a-file'
    taken.write_text('not a run directory')
    assert cli_exit_code(demo, ['--tiny', '--out', taken]) == 2
    assert 'is an existing file' in one_error_line(capsys)
    assert taken.read_text() == 'not a run directory'


def test_a_failing_stage_ends_with_one_error_line_naming_it_and_its_log(tmp_path):
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'supernet').write_text('in the way')        # stage 1's --save is a file: it refuses to start
    proc = run_script('demo.py', '--tiny', '--out', out, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2
    assert last.startswith('error: demo stage 1. supernet failed') and str(out / 'supernet' / 'log.txt') in last
    assert sum(ln.startswith('error: demo') for ln in proc.stderr.splitlines()) == 1
    assert '2a. search' not in proc.stdout                # nothing after the failed stage ran


def test_stages_are_named_records_of_the_three_kinds(tmp_path):
    got = demo.stages(tmp_path, 'tiny', seed=5)
    assert [s.kind for s in got] == ['supernet', 'search', 'search', 'retrain', 'retrain']
    assert [s.command[0] for s in got] == ['train_supernet/train.py', 'evolutionary_search/search.py',
                                           'evolutionary_search/search.py', 'retrain/retrain.py', 'retrain/retrain.py']
    assert all(s.command[s.command.index('--save') + 1] == s.run_dir for s in got)
    assert all(s.command[s.command.index('--seed') + 1] == 5 for s in got)      # every stage follows --seed
    assert not any(s.resume for s in got)                 # nothing started yet: nothing to resume
    retrains = [s for s in got if s.kind == 'retrain']    # the baseline is retrained exactly as the searched cell
    searched, baseline = (tmp_path / 'search-wlm' / 'genotype.json', tmp_path / 'baseline_genotype.json')
    assert ([a for a in retrains[0].command if a not in (retrains[0].run_dir, searched)]
            == [a for a in retrains[1].command if a not in (retrains[1].run_dir, baseline)])


def test_the_baseline_cell_is_a_uniform_cell_drawn_with_the_demo_seed(tmp_path):
    space = get_space('darts')
    for seed in (0, 1):
        (tmp_path / str(seed)).mkdir()
        path = demo.write_baseline(tmp_path / str(seed), seed)
        assert genotypes.encode(genotypes.load_genotype(path)) == space.uniform_sample(1, seed)[0]
    drawn = [(tmp_path / str(seed) / 'baseline_genotype.json').read_text() for seed in (0, 1)]
    assert drawn[0] != drawn[1]


def test_a_demo_directory_refuses_another_seed_or_scale_and_keeps_its_files(tmp_path, capsys):
    demo.claim_settings(tmp_path, 'tiny', 3)
    before = (tmp_path / 'demo.json').read_text()
    for scale, seed in (('tiny', 4), ('full', 3)):
        with pytest.raises(UserError, match=r'holds a demo run with --seed 3 --tiny; rerun with those flags'):
            demo.claim_settings(tmp_path, scale, seed)
    demo.claim_settings(tmp_path, 'tiny', 3)              # the same settings: accepted
    assert (tmp_path / 'demo.json').read_text() == before
    assert cli_exit_code(demo, ['--tiny', '--seed', '-1', '--out', tmp_path / 'x']) == 2
    assert '--seed must be between 0 and' in one_error_line(capsys)


def test_retrain_is_done_only_once_its_last_epoch_is_logged(tmp_path):
    retrain = next(s for s in demo.stages(tmp_path, 'tiny') if s.kind == 'retrain')
    retrain.run_dir.mkdir(parents=True)
    retrain.marker.write_bytes(b'')                       # model_best of an earlier epoch
    (retrain.run_dir / 'args.json').write_text(json.dumps({'epochs': 2}))
    (retrain.run_dir / 'metrics.jsonl').write_text(json.dumps({'epoch': 1}) + '\n')
    assert not retrain.done()
    with open(retrain.run_dir / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps({'epoch': 2}) + '\n')
    assert retrain.done()
    assert next(s for s in demo.stages(tmp_path, 'tiny') if s.kind == 'retrain').resume == ['--resume',
                                                                                              retrain.run_dir]


def write_lines(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


STDS = [0.001, 0.003, 0.006]
# losses 0.5, 0.6, 0.8 under the three stds: poor = 0.5/0.001 + 0.1/0.002 + 0.2/0.003 = 500 + 50 + 66.667 = 616.667,
# so |L1/s1| is 500 / 616.667 = 81.08% of it; angle+wlm's score 0.02 + 16/0.001 * 1/616.667 = 0.02 + 25.946:
# the angle term is 0.02 / 25.966 = 0.077% of it.
WLM_ENTRY = {'losses': [0.5, 0.6, 0.8], 'poor': 616.6666666666667, 'wlm': 1 / 616.6666666666667}
ANGLE_ENTRY = {**WLM_ENTRY, 'angle_normalized': 0.02, 'score': 0.02 + 16 / 0.001 / 616.6666666666667}


def public_outputs(out, geno, other=None, valid_acc=0.5):
    """What the stages leave behind (no search checkpoints): metrics, args and the searches' genotype.json. The
    angle+wlm search's best cell is `other` (default: the same as the wlm search's)."""
    write_lines(out / 'supernet' / 'metrics.jsonl', [{'epoch': 1, 'train_acc': 0.25, 'valid_acc': valid_acc}])
    (out / 'supernet' / 'args.json').write_text(json.dumps({'valid_paths': 5}))
    for folder, metric, scored, best, entry in (('search-wlm', 'wlm', 17, geno, {**WLM_ENTRY, 'score': 1.5}),
                                                ('search-angle-wlm', 'angle+wlm', 9, other or geno, ANGLE_ENTRY)):
        write_lines(out / folder / 'metrics.jsonl', [{'generation': 1, 'scored': 3}, {'generation': 2,
                                                                                      'scored': scored}])
        top = [{'candidate': genotypes.encode(best), 'genotype': genotypes.genotype_to_dict(best), **entry}]
        genotypes.save_genotype(out / folder / 'genotype.json', best, name=f'searched_{metric}', metric=metric,
                                score=entry['score'], top10=top, args={'stds': STDS},
                                formula=metrics.formula(metric, 16, 1, STDS))
    (out / 'retrain').mkdir()
    (out / 'retrain' / 'args.json').write_text(json.dumps({'dataset': 'synthetic', 'data': None, 'seed': 0,
                                                           'init_channels': 8, 'layers': 3, 'epochs': 1,
                                                           'train_subset': 64}))
    write_lines(out / 'retrain' / 'metrics.jsonl', [{'epoch': 1, 'val_top1': 0.625, 'val_top5': 0.875,
                                                      'val_images': 40}])


def small_test_set(monkeypatch):
    monkeypatch.setattr(demo, 'load_arrays', lambda dataset, root=None, train=True: synthetic_arrays(
        8, num_classes=100, size=16))


def test_report_is_built_from_public_outputs_only(tmp_path, monkeypatch):
    """No search_checkpoint.json anywhere; the network's size is that of the retrained dataset's images and
    classes (here 16x16, 100 classes, not the 32x32 and 10 of CIFAR); the shares are those computed by hand."""
    geno = genotypes.DARTS_V2
    public_outputs(tmp_path, geno)
    assert not list(tmp_path.rglob('search_checkpoint.json'))
    small_test_set(monkeypatch)
    text = demo.report(tmp_path, 'tiny', {'1. supernet': [3.0, 'ran']}, 5.0)
    assert text == (tmp_path / 'report.md').read_text()
    net = NetworkCIFAR(8, 100, 3, False, geno)
    params, macs = count_parameters(net), count_macs(net, torch.zeros(1, 3, 16, 16))
    assert f'`{geno}`' in text                             # the searched genotype, from genotype.json
    assert f'| {params / 1e6:.3f}M | {macs / 1e6:.1f}M | **62.50%** | 87.50% |' in text
    assert 'multiply-adds per 16x16 image' in text and 'tested on 40 test images' in text
    assert '17 candidates scored in 2 generations' in text and '9 candidates scored in 2 generations' in text
    assert text.count('|L1/s1| is 81.1% for the best candidate') == 2
    assert 'The angle term angle/pi is 0.08% of the score' in text
    assert f'| 1 | {demo.cell_text(geno.normal)} | {demo.cell_text(geno.reduce)} | 6/16 | 1.5 |' in text
    assert 'reaches **50.0%** valid accuracy (mean of 5 random paths; train accuracy 25.0%), 5.0 times chance' in text
    assert 'barely learned' not in text


def test_cell_text_names_each_node_from_its_two_inputs():
    ops = [('sep_conv_3x3', 0), ('skip_connect', 1), ('max_pool_3x3', 2), ('dil_conv_5x5', 0),
           ('avg_pool_3x3', 3), ('sep_conv_5x5', 1), ('skip_connect', 4), ('none', 2)]
    assert demo.cell_text(ops) == ('n0 = sep_conv_3x3(k-2) + skip_connect(k-1); n1 = max_pool_3x3(n0) + '
                                   'dil_conv_5x5(k-2); n2 = avg_pool_3x3(n1) + sep_conv_5x5(k-1); n3 = '
                                   'skip_connect(n2) + none(n0)')
    # DARTS_V2: normal 5 sep_conv_3x3, 2 skips, 1 dil_conv_3x3; reduce only max_pool and skip_connect
    assert demo.convolutions(genotypes.DARTS_V2) == 6


def test_report_warns_of_an_untrained_supernet_and_of_searches_that_agree(tmp_path, monkeypatch):
    small_test_set(monkeypatch)
    public_outputs(tmp_path / 'a', genotypes.DARTS_V2, valid_acc=0.19)
    text = demo.report(tmp_path / 'a', 'tiny', {}, 0.0)
    assert 'Warning: the supernet has barely learned' in text and '1.9 times chance' in text
    assert 'share 1 of 1 candidates; the best cell is the same' in text and 'searches agree entirely' in text
    public_outputs(tmp_path / 'b', genotypes.DARTS_V2, other=genotypes.GENAS_FLATNESS_CIFAR10, valid_acc=0.2)
    text = demo.report(tmp_path / 'b', 'tiny', {}, 0.0)
    assert 'barely learned' not in text and 'agree entirely' not in text
    assert 'share 0 of 1 candidates; the best cell is different' in text


def test_report_sets_the_baseline_beside_the_searched_cell(tmp_path, monkeypatch):
    small_test_set(monkeypatch)
    public_outputs(tmp_path, genotypes.DARTS_V2)
    demo.write_baseline(tmp_path, 0)
    write_lines(tmp_path / 'retrain-baseline' / 'metrics.jsonl', [{'epoch': 1, 'val_top1': 0.6, 'val_top5': 0.9,
                                                                   'val_images': 40}])
    (tmp_path / 'retrain-baseline' / 'args.json').write_text((tmp_path / 'retrain' / 'args.json').read_text())
    text = demo.report(tmp_path, 'tiny', {}, 0.0)
    assert '| baseline: a uniformly random cell |' in text and '**60.00%** | 90.00% |' in text
    assert 'The searched cell is 2.50 points above the baseline' in text


@pytest.mark.parametrize('missing', ['search-wlm/genotype.json', 'retrain/metrics.jsonl'])
def test_report_needs_the_public_outputs(tmp_path, missing):
    """The check above is not vacuous: the report does read these files."""
    public_outputs(tmp_path, genotypes.DARTS_V2)
    (tmp_path / missing).unlink()
    with pytest.raises((OSError, genotypes.GenotypeError)):
        demo.report(tmp_path, 'tiny', {}, 0.0)
