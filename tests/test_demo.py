"""demo.py: its command-line contract, its stages, and a report built from the stages' public outputs only."""
import json

import pytest
import torch

import demo
import genotypes
from conftest import cli_exit_code, run_script
from counting import count_macs, count_parameters
from data import synthetic_arrays
from spaces.darts_network import NetworkCIFAR


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
    got = demo.stages(tmp_path, 'tiny')
    assert [s.kind for s in got] == ['supernet', 'search', 'search', 'retrain']
    assert [s.command[0] for s in got] == ['train_supernet/train.py', 'evolutionary_search/search.py',
                                           'evolutionary_search/search.py', 'retrain/retrain.py']
    assert all(s.command[s.command.index('--save') + 1] == s.run_dir for s in got)
    assert not any(s.resume for s in got)                 # nothing started yet: nothing to resume


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


def public_outputs(out, geno):
    """What the stages leave behind (no search checkpoints): metrics, args and the searches' genotype.json."""
    write_lines(out / 'supernet' / 'metrics.jsonl', [{'epoch': 1, 'train_acc': 0.25, 'valid_acc': 0.5}])
    cand = genotypes.encode(geno)
    for folder, metric, scored in (('search-wlm', 'wlm', 17), ('search-angle-wlm', 'angle+wlm', 9)):
        write_lines(out / folder / 'metrics.jsonl', [{'generation': 1, 'scored': 3}, {'generation': 2,
                                                                                      'scored': scored}])
        top = [{'candidate': cand, 'score': 1.5, 'poor': 0.25}]
        genotypes.save_genotype(out / folder / 'genotype.json', geno, name=f'searched_{metric}', metric=metric,
                                score=1.5, top10=top)
    (out / 'retrain').mkdir()
    (out / 'retrain' / 'args.json').write_text(json.dumps({'dataset': 'synthetic', 'data': None,
                                                           'init_channels': 8, 'layers': 3, 'epochs': 1}))
    write_lines(out / 'retrain' / 'metrics.jsonl', [{'epoch': 1, 'val_top1': 0.625, 'val_top5': 0.875,
                                                      'val_images': 40}])


def test_report_is_built_from_public_outputs_only(tmp_path, monkeypatch):
    """No search_checkpoint.json anywhere; the network's size is that of the retrained dataset's images and
    classes (here 16x16, 100 classes, not the 32x32 and 10 of CIFAR)."""
    geno = genotypes.DARTS_V2
    public_outputs(tmp_path, geno)
    assert not list(tmp_path.rglob('search_checkpoint.json'))
    monkeypatch.setattr(demo, 'load_arrays', lambda dataset, root=None, train=True: synthetic_arrays(
        8, num_classes=100, size=16))
    text = demo.report(tmp_path, 'tiny', {'1. supernet': [3.0, 'ran']}, 5.0)
    assert text == (tmp_path / 'report.md').read_text()
    net = NetworkCIFAR(8, 100, 3, False, geno)
    params, macs = count_parameters(net), count_macs(net, torch.zeros(1, 3, 16, 16))
    assert f'`{geno}`' in text                             # the searched genotype, from genotype.json
    assert f'{params / 1e6:.3f}M parameters, {macs / 1e6:.1f}M multiply-adds per 16x16 image' in text
    assert '## Search: wlm (the best 5 of 17 candidates scored)' in text
    assert '## Search: angle+wlm (the best 5 of 9 candidates scored)' in text
    assert f'| 1 | `{",".join(map(str, genotypes.encode(geno)))}` | 1.5 | poor 0.25 |' in text
    assert 'valid accuracy of a random path 50.0% after 1 epochs (train accuracy 25.0%)' in text
    assert '**62.50%** (top-5 87.50%, 40 test images)' in text


@pytest.mark.parametrize('missing', ['search-wlm/genotype.json', 'retrain/metrics.jsonl'])
def test_report_needs_the_public_outputs(tmp_path, missing):
    """The check above is not vacuous: the report does read these files."""
    public_outputs(tmp_path, genotypes.DARTS_V2)
    (tmp_path / missing).unlink()
    with pytest.raises((OSError, genotypes.GenotypeError)):
        demo.report(tmp_path, 'tiny', {}, 0.0)
