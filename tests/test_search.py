"""Stage 2 through its CLI: exact resume, scoring given cells, genotype.json, bad input, real data."""
import json
from pathlib import Path

import pytest
import torch

import genotypes as G
from conftest import cli_exit_code, kill_moments, run_and_kill, run_script, slow_params, snapshot_dir
from evolutionary_search import search
from train_supernet import train

TINY_SUPERNET = ['--dataset', 'synthetic', '--init_channels', 4, '--layers', 3, '--batch_size', 32,
                 '--train_subset', 128, '--valid_subset', 64, '--valid_bn_images', 32, '--seed', 1, '--epochs', 1]
TINY_SEARCH = ['--max_epochs', 3, '--population_num', 6, '--select_num', 3, '--mutation_num', 2,
               '--crossover_num', 2, '--max_train_img_size', 32, '--max_val_img_size', 64, '--batch_size', 32,
               '--test_batch_size', 64, '--metric', 'angle+wlm', '--wlm_weight', 0.5, '--seed', 7]


@pytest.fixture(scope='module')
def supernet(tmp_path_factory):
    run = tmp_path_factory.mktemp('search') / 'supernet'
    train.main(train.parse_args([str(a) for a in TINY_SUPERNET + ['--save', run]]))
    return run


def ckpts(run):
    return ['--init_model_path', run / 'checkpoint_epoch_0.pth.tar', '--model_path', run / 'checkpoint_epoch_1.pth.tar']


def _cli(argv, capsys):
    """Run the stage-2 CLI in-process; returns (exit status, captured stdout/stderr)."""
    return cli_exit_code(search, argv), capsys.readouterr()


@pytest.fixture(scope='module')
def straight(supernet, tmp_path_factory):
    run = tmp_path_factory.mktemp('straight') / 'search'
    run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', run)
    return run


def scored(run):
    """Candidates in the search checkpoint (-1 before the run wrote its args.json, 0 before the checkpoint)."""
    try:
        return len(json.loads((run / 'search_checkpoint.json').read_text())['evolution']['scores'])
    except OSError:
        return 0 if (run / 'args.json').exists() else -1


@pytest.mark.parametrize('moment', ['stop_after'] + slow_params(
    kill_moments(2, range(0, 6), range(6, 18))),
                         ids=lambda m: m if isinstance(m, str) else f'kill-9-after-{m}-scored')
def test_search_resumes_exactly_after_a_kill(supernet, straight, moment, tmp_path):
    """--stop_after 8, or kill -9 once `moment` candidates are scored (the first inside generation 1), then the
    README's resume (the same command again): the same genotype.json and metrics.jsonl, bit for bit."""
    killed = tmp_path / 'killed'
    if moment == 'stop_after':
        run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', killed,
                   '--stop_after', 8)
        state = json.loads((killed / 'search_checkpoint.json').read_text())['evolution']
        assert len(state['scores']) == 8 and state['generation'] == 1       # stopped inside generation 2
        assert not (killed / 'genotype.json').exists()
        run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--resume', killed)
    else:
        if run_and_kill('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', killed,
                        reached=lambda: scored(killed) >= moment):
            run_script('evolutionary_search/search.py', *ckpts(supernet), *TINY_SEARCH, '--save', killed)
    a, b = (json.loads((d / 'genotype.json').read_text()) for d in (straight, killed))
    assert [t['candidate'] for t in a['top10']] == [t['candidate'] for t in b['top10']]
    assert [t['score'] for t in a['top10']] == [t['score'] for t in b['top10']]
    assert (straight / 'metrics.jsonl').read_text() == (killed / 'metrics.jsonl').read_text()
    assert (straight / 'search_checkpoint.json').read_bytes() == (killed / 'search_checkpoint.json').read_bytes()


def test_genotype_json_holds_what_stage_3_needs(supernet, straight):
    a = json.loads((straight / 'genotype.json').read_text())
    # genotype.json: best first, decodes, everything stage 3 and a reader need
    assert a['candidate'] == a['top10'][0]['candidate'] and a['score'] == a['top10'][0]['score']
    assert G.load_genotype(straight / 'genotype.json') == G.decode(a['candidate'])
    assert {'angle', 'angle_normalized', 'wlm', 'losses'} <= set(a['components']) and a['metric'] == 'angle+wlm'
    assert a['checkpoints']['model_path'].endswith('checkpoint_epoch_1.pth.tar') and a['args']['seed'] == 7
    gens = [json.loads(ln) for ln in (straight / 'metrics.jsonl').read_text().splitlines()]
    assert [g['generation'] for g in gens] == [1, 2, 3] and len(gens[-1]['top_k']) == 3
    assert len(json.loads((straight / 'search_checkpoint.json').read_text())['evolution']['scores']) == 18


def test_scoring_given_candidates_matches_the_search(supernet, tmp_path, capsys):
    run = tmp_path / 'search'
    assert _cli(ckpts(supernet) + TINY_SEARCH + ['--save', run], capsys)[0] == 0
    scores = json.loads((run / 'search_checkpoint.json').read_text())['evolution']['scores']
    key, info = sorted(scores.items())[0]
    (tmp_path / 'cands.txt').write_text(f'# a comment\n{key}\n\n{key.replace(",", " ")}\n')
    G.save_genotype(tmp_path / 'g.json', G.GENAS_FLATNESS_CIFAR10)
    code, out = _cli(ckpts(supernet) + TINY_SEARCH + ['--candidates', tmp_path / 'cands.txt', '--arch', 'DARTS_V2',
                                                      '--arch', tmp_path / 'g.json', '--save', tmp_path / 'given'],
                     capsys)
    assert code == 0
    lines = [json.loads(ln) for ln in out.out.splitlines() if ln.startswith('{')]
    assert [ln['name'] for ln in lines] == ['line 2', 'line 4', 'DARTS_V2', str(tmp_path / 'g.json')]
    assert lines[0]['score'] == info['score'] == lines[1]['score'] and lines[0]['losses'] == info['losses']
    assert lines[2]['candidate'] == G.encode(G.DARTS_V2)
    assert {'angle', 'angle_normalized', 'wlm', 'poor', 'losses', 'score'} <= set(lines[3])
    assert len((tmp_path / 'given' / 'scores.jsonl').read_text().splitlines()) == 4


def test_reference_checkpoint_layout_loads(supernet, tmp_path, capsys):
    ck = torch.load(supernet / 'checkpoint_epoch_1.pth.tar')
    ref = {'epoch': 250, 'state_dict': {f'module.{k}': v for k, v in ck['state_dict'].items()},
           'optimizer': ck['optimizer']}
    torch.save(ref, tmp_path / 'ref.pth.tar')
    base = ['--model_path', tmp_path / 'ref.pth.tar', '--metric', 'acc', '--dataset', 'synthetic',
            '--arch', 'DARTS_V2', '--max_train_img_size', 32, '--max_val_img_size', 32]
    code, out = _cli(base + ['--save', tmp_path / 'a'], capsys)
    assert code == 2 and '--init_channels 16 --layers 8' in out.err
    code, out = _cli(base + ['--init_channels', 4, '--layers', 3, '--save', tmp_path / 'b'], capsys)
    assert code == 0 and 0 <= json.loads(out.out.splitlines()[0])['acc'] <= 1


@pytest.mark.parametrize('extra, message', [
    (['--metric', 'loss'], "unknown --metric 'loss'; choose one of angle, acc, wlm"),
    (['--stds', '0.003,0.001'], 'strictly increasing'),
    (['--stds', ''], '--stds is empty'),
    (['--init_channels', 8], 'shape mismatches'),
    (['--dataset', 'fashion-mnist', '--data', '/nonexistent'], 'not found'),
])
def test_bad_input_exits_2_with_one_line(supernet, tmp_path, capsys, extra, message):
    code, out = _cli(ckpts(supernet) + TINY_SEARCH + extra + ['--save', tmp_path / 'run'], capsys)
    assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / 'run').exists()


def test_shape_message_names_the_shapes(supernet, tmp_path, capsys):
    code, out = _cli(ckpts(supernet) + TINY_SEARCH + ['--init_channels', 8, '--save', tmp_path / 'r'], capsys)
    assert code == 2 and 'checkpoint (' in out.err and 'vs model (' in out.err


def test_missing_checkpoint_and_changed_flags_on_resume(supernet, tmp_path, capsys):
    code, out = _cli(['--model_path', tmp_path / 'nope.pth.tar', '--save', tmp_path / 'r'], capsys)
    assert code == 2 and 'does not exist' in out.err
    run = tmp_path / 'run'
    assert _cli(ckpts(supernet) + TINY_SEARCH + ['--save', run, '--stop_after', 2], capsys)[0] == 0
    before = snapshot_dir(run)
    code, out = _cli(ckpts(supernet) + TINY_SEARCH[:-2] + ['--seed', 8, '--save', run], capsys)
    assert code == 2 and '--seed 7 -> 8' in out.err
    assert snapshot_dir(run) == before


@pytest.mark.slow
def test_fashion_mnist_wlm_search_writes_a_loadable_genotype(readme_runs):
    """The README's offline wlm search (population 8, 2 generations) on its Fashion-MNIST supernet."""
    sandbox, _ = readme_runs
    out = sandbox / 'runs' / 'search-fmnist-wlm'
    doc = json.loads((out / 'genotype.json').read_text())
    assert doc['metric'] == 'wlm' and len(doc['top10']) == 10 and doc['args']['dataset'] == 'fashion-mnist'
    geno = G.resolve_genotype(str(out / 'genotype.json'))
    assert G.encode(geno) == doc['candidate']
    assert all(t['losses'][0] < 2.3 for t in doc['top10'])           # better than a uniform guess (ln 10)
    scores = [json.loads(ln) for ln in (sandbox / 'scores.jsonl').read_text().splitlines()]
    assert [s['name'] for s in scores] == ['GENAS_FLATNESS_CIFAR10', 'DARTS_V2']
    assert all({'angle', 'wlm', 'losses', 'score'} <= set(s) for s in scores)


@pytest.mark.slow
def test_precision_tau_script(supernet, capsys):
    from benchmarks import precision_tau
    out = precision_tau.main(['--model_path', str(supernet / 'checkpoint_epoch_1.pth.tar'), '--candidates', '4',
                              '--precisions', 'bf16,tf32', '--max_train_img_size', '32', '--max_val_img_size', '64'])
    assert set(out['results']) == {'fp32', 'bf16', 'tf32'}
    assert out['results']['fp32']['kendall_tau_vs_fp32'] == 1.0
    assert out['results']['tf32']['max_relative_score_change'] == 0.0      # TF32 means nothing on a CPU
    assert -1 <= out['results']['bf16']['slope_kendall_tau_vs_fp32'] <= 1


# --- bad input, table by kind: exit 2, one error line, every file that was there unchanged ----------------------
import shutil  # noqa: E402

from conftest import assert_refused  # noqa: E402

QUICK = ['--max_epochs', 1, '--population_num', 2, '--select_num', 1, '--mutation_num', 0, '--crossover_num', 0,
         '--metric', 'params', '--device', 'cpu']


def kept(before, after):
    """The files of `before` as they are now (a lock file the CLI adds is not a file it overwrote)."""
    return {k: after.get(k) for k in before}


@pytest.fixture(scope='module')
def owned(tiny_supernet, tmp_path_factory):
    """A supernet run (copied) and a finished search over it, both to be written into by the cases."""
    root = tmp_path_factory.mktemp('owned')
    sn = root / 'supernet'
    shutil.copytree(tiny_supernet('darts'), sn)
    code = cli_exit_code(search, ['--model_path', sn / 'checkpoint_epoch_1.pth.tar', *QUICK, '--save', root / 'done'])
    assert code is None or code == 0
    return sn, root / 'done'


def state_with(tmp, **entries):
    """A search run directory whose search_checkpoint.json holds `entries` in place of the evolution state."""
    run = tmp / 'garbage'
    run.mkdir()
    (run / 'search_checkpoint.json').write_text(json.dumps(entries))
    return run


def nan_checkpoint(sn, tmp):
    ckpt = torch.load(sn / 'checkpoint_epoch_1.pth.tar', weights_only=False)
    key = next(k for k in ckpt['state_dict'] if k.endswith('classifier.weight'))
    ckpt['state_dict'][key] = torch.full_like(ckpt['state_dict'][key], float('nan'))
    torch.save(ckpt, tmp / 'nan.pth.tar')
    return tmp / 'nan.pth.tar'


def genotype_file(tmp, doc):
    (tmp / 'cell.json').write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return tmp / 'cell.json'


def darts_v2_with(**change):
    return {'genotype': {**G.genotype_to_dict(G.DARTS_V2), **change}}


def binary(tmp, name='x.bin'):
    (tmp / name).write_bytes(bytes(range(256)) * 4)
    return tmp / name


def pickled(tmp, obj, name='obj.pth.tar'):
    torch.save(obj, tmp / name)
    return tmp / name


# name -> (extra argv, --save, message); callables get (tmp, supernet run, finished search run)
SEARCH_CASES = {
    # a run directory of another kind
    'scoring-into-supernet-run': (lambda t, s, d: ['--arch', 'DARTS_V2'], lambda t, s, d: s, 'stage-1 supernet run'),
    'scoring-into-supernet-run-restart': (lambda t, s, d: ['--arch', 'DARTS_V2', '--restart'], lambda t, s, d: s,
                                          'stage-1 supernet run'),
    'scoring-into-finished-search': (lambda t, s, d: ['--arch', 'DARTS_V2'], lambda t, s, d: d, 'evolutionary search'),
    'scoring-into-finished-search-restart': (lambda t, s, d: ['--arch', 'DARTS_V2', '--restart'], lambda t, s, d: d,
                                             'evolutionary search'),
    'search-into-supernet-run': (lambda t, s, d: [], lambda t, s, d: s, 'stage-1 supernet run'),
    'search-restart-into-supernet-run': (lambda t, s, d: ['--restart'], lambda t, s, d: s, 'stage-1 supernet run'),
    'save-is-a-file': (lambda t, s, d: [], lambda t, s, d: binary(t, 'file'), 'is an existing file'),
    # search checkpoints of the wrong shape
    'resume-list': (lambda t, s, d: ['--resume', state_with(t)], lambda t, s, d: t / 'garbage', 'not a search'),
    'resume-binary': (lambda t, s, d: ['--resume', binary(t, 'search_checkpoint.json')], lambda t, s, d: t,
                      'binary file'),
    'resume-evolution-empty': (lambda t, s, d: ['--resume', state_with(t, args={}, evolution={})],
                               lambda t, s, d: t / 'garbage', "no 'generation' entry"),
    'resume-evolution-string': (lambda t, s, d: ['--resume', state_with(t, args={}, evolution='abc')],
                                lambda t, s, d: t / 'garbage', "'evolution' entry is a str"),
    'resume-args-list': (lambda t, s, d: ['--resume', state_with(t, args=[], evolution={})],
                         lambda t, s, d: t / 'garbage', "'args' entry is a list"),
    'resume-evolution-garbage': (lambda t, s, d: ['--resume', state_with(
        t, args={}, evolution={'generation': 0, 'population': ['abc'], 'scores': {'x': 5}, 'top_k': [],
                               'top_keep': [], 'history': [], 'done': False, 'rng': [3, [1], None]})],
        lambda t, s, d: t / 'garbage', 'wrong form'),
    'resume-evolution-bad-rng': (lambda t, s, d: ['--resume', state_with(
        t, args={}, evolution={'generation': 0, 'population': [], 'scores': {}, 'top_k': [], 'top_keep': [],
                               'history': [], 'done': False, 'rng': [3, [1, 2], None]})],
        lambda t, s, d: t / 'garbage', 'random state'),
    # supernet checkpoints
    'model-path-text': (lambda t, s, d: ['--model_path', genotype_file(t, 'hello')], lambda t, s, d: t, 'cell.json'),
    'model-path-pickled-list': (lambda t, s, d: ['--model_path', pickled(t, [1, 2])], lambda t, s, d: t,
                                'obj.pth.tar'),
    'model-path-pickled-int': (lambda t, s, d: ['--model_path', pickled(t, 5)], lambda t, s, d: t, 'obj.pth.tar'),
    'model-path-state-of-ints': (lambda t, s, d: ['--model_path', pickled(
        t, {'state_dict': {'classifier.weight': 5}})], lambda t, s, d: t, 'not a tensor'),
    'model-path-nan-weights': (lambda t, s, d: ['--model_path', nan_checkpoint(s, t)], lambda t, s, d: t,
                               'non-finite weights'),
    'init-model-path-binary': (lambda t, s, d: ['--metric', 'angle', '--init_model_path', binary(t)],
                               lambda t, s, d: t, 'x.bin'),
    # genotypes and candidate files
    'arch-op-as-list': (lambda t, s, d: ['--arch', genotype_file(t, darts_v2_with(
        normal=[[['sep_conv_3x3'], 0]] * 8))], lambda t, s, d: t, 'cell.json'),
    'arch-candidate-abc': (lambda t, s, d: ['--arch', genotype_file(t, {'candidate': 'abc'})], lambda t, s, d: t,
                           'cell.json'),
    'arch-candidate-5': (lambda t, s, d: ['--arch', genotype_file(t, {'candidate': 5})], lambda t, s, d: t,
                         'cell.json'),
    'arch-candidate-nan': (lambda t, s, d: ['--arch', genotype_file(t, '{"candidate": [NaN, 1, 2]}')],
                           lambda t, s, d: t, 'cell.json'),
    'arch-nulls': (lambda t, s, d: ['--arch', genotype_file(t, {'genotype': {'normal': None, 'normal_concat': None,
                                                                            'reduce': None, 'reduce_concat': None}})],
                   lambda t, s, d: t, 'cell.json'),
    'arch-concat-5': (lambda t, s, d: ['--arch', genotype_file(t, darts_v2_with(normal_concat=5))], lambda t, s, d: t,
                      'cell.json'),
    'arch-binary': (lambda t, s, d: ['--arch', binary(t, 'cell.json')], lambda t, s, d: t, 'cell.json'),
    'candidates-binary': (lambda t, s, d: ['--candidates', binary(t)], lambda t, s, d: t, 'x.bin'),
    'candidates-garbage': (lambda t, s, d: ['--candidates', genotype_file(t, 'abc def\n')], lambda t, s, d: t,
                           'line 1'),
    # numbers
    'seed-negative': (lambda t, s, d: ['--seed', -1], lambda t, s, d: t, '--seed must be >= 0'),
    'seed-beyond-64-bits': (lambda t, s, d: ['--seed', 2 ** 64], lambda t, s, d: t, '--seed must be'),
    'mutation-num-negative': (lambda t, s, d: ['--mutation_num', -1], lambda t, s, d: t, '--mutation_num'),
    'crossover-num-negative': (lambda t, s, d: ['--crossover_num', -1], lambda t, s, d: t, '--crossover_num'),
    'm-prob-negative': (lambda t, s, d: ['--m_prob', -0.1], lambda t, s, d: t, '--m_prob'),
    'm-prob-above-1': (lambda t, s, d: ['--m_prob', 1.5], lambda t, s, d: t, '--m_prob'),
    'stop-after-negative': (lambda t, s, d: ['--stop_after', -1], lambda t, s, d: t, '--stop_after'),
    'budget-channels-0': (lambda t, s, d: ['--flops_limit', '1G', '--budget_channels', 0], lambda t, s, d: t,
                          '--budget_channels'),
    'budget-layers-0': (lambda t, s, d: ['--flops_limit', '1G', '--budget_layers', 0], lambda t, s, d: t,
                        '--budget_layers'),
    'wlm-weight-nan': (lambda t, s, d: ['--wlm_weight', 'nan'], lambda t, s, d: t, '--wlm_weight'),
    'wlm-weight-inf': (lambda t, s, d: ['--wlm_weight', 'inf'], lambda t, s, d: t, '--wlm_weight'),
    'acc-weight-nan': (lambda t, s, d: ['--acc_weight', 'nan'], lambda t, s, d: t, '--acc_weight'),
    'max-epochs-0': (lambda t, s, d: ['--max_epochs', 0], lambda t, s, d: t, '--max_epochs'),
    'population-num-0': (lambda t, s, d: ['--population_num', 0], lambda t, s, d: t, '--population_num'),
}


def search_case(name, tmp, owned):
    """(argv, the folder watched) of a case; the supernet and the finished search of `owned` are copied first."""
    sn, done = (shutil.copytree(p, tmp / p.name) for p in owned)
    extra, save, message = SEARCH_CASES[name]
    extra = [str(a) for a in extra(tmp, sn, done)]
    save = save(tmp, sn, done)
    model = [] if '--model_path' in extra else ['--model_path', sn / 'checkpoint_epoch_1.pth.tar']
    if '--resume' in extra:
        save = Path(extra[extra.index('--resume') + 1]).parent if save == tmp else save
        return [*model, *QUICK, *extra], save, message
    return [*model, *QUICK, *extra, '--save', save], save if save.is_dir() else save.parent, message


@pytest.mark.parametrize('name', SEARCH_CASES)
def test_search_refuses_bad_input_and_keeps_every_file(name, owned, tmp_path, capsys):
    argv, watched, message = search_case(name, tmp_path, owned)
    before = snapshot_dir(tmp_path)
    code, out = _cli(argv, capsys)
    assert_refused(code, out.err, message, before, kept(before, snapshot_dir(tmp_path)))
    assert watched.exists()


def test_a_supernet_of_nan_weights_is_refused_naming_it(owned, tmp_path, capsys):
    code, out = _cli(['--model_path', nan_checkpoint(owned[0], tmp_path), *QUICK, '--save', tmp_path / 's'], capsys)
    assert code == 2 and 'nan.pth.tar holds non-finite weights' in out.err
    assert not (tmp_path / 's' / 'search_checkpoint.json').exists()


def test_a_nan_score_is_an_error_naming_the_candidate(owned, tmp_path, capsys, monkeypatch):
    """A metric that gives NaN for the second candidate (and inf for none): the evolution stops there, naming it,
    and its search checkpoint holds the first candidate only."""
    from evolutionary_search.metrics import METRICS
    seen = []

    def diverging(ctx, cand):
        seen.append(','.join(map(str, cand)))
        return {'score': 1.0 if len(seen) == 1 else float('nan')}
    monkeypatch.setitem(METRICS, 'params', diverging)
    code, out = _cli(['--model_path', owned[0] / 'checkpoint_epoch_1.pth.tar', *QUICK, '--save', tmp_path / 's'],
                     capsys)
    assert code == 2 and f'candidate {seen[1]} scored nan' in out.err, out.err
    scores = json.loads((tmp_path / 's' / 'search_checkpoint.json').read_text())['evolution']['scores']
    assert list(scores) == [seen[0]]
