"""Cost budgets of the search (--flops_limit, --params_limit): the counting, the evolution that never proposes a
candidate over a limit and measures each once, and the CLI (scored costs, impossible limits, resume check)."""
import argparse
import json
import random
from collections import Counter

import pytest
import torch

import genotypes as G
from conftest import cli_exit_code, snapshot_dir
from evolutionary_search import runner, search
from evolutionary_search.budget import Budget, make_budget, parse_amount
from evolutionary_search.evolution import Evolution, cand_key, key_cand
from spaces import get_space
from train_supernet import train
from utils import UserError

DARTS = get_space('darts')
TINY_SUPERNET = ['--dataset', 'synthetic', '--init_channels', 4, '--layers', 3, '--batch_size', 32,
                 '--train_subset', 64, '--valid_subset', 32, '--valid_bn_images', 32, '--seed', 1, '--epochs', 1]
SEARCH = ['--max_epochs', 3, '--population_num', 6, '--select_num', 3, '--mutation_num', 2, '--crossover_num', 2,
          '--metric', 'angle', '--seed', 7, '--device', 'cpu']
SMALL_NET = ['--budget_network', 'cifar', '--budget_channels', 4, '--budget_layers', 3]   # fast to measure


def small_budget(**limits):
    return Budget(DARTS, 'cifar', 4, 3, 10, (3, 32, 32), **limits)


def test_darts_v2_on_imagenet_costs_what_the_paper_says():
    """DARTS_V2 in the mobile setting (C=48, 14 cells, 224x224) counts 529.9M multiply-adds (convolutions and
    linear layers) and 4.7M parameters."""
    budget = make_budget(argparse.Namespace(flops_limit=6e8, params_limit=None, budget_network='imagenet',
                                            budget_channels=None, budget_layers=None), DARTS, 10, (32, 32))
    assert (budget.channels, budget.layers, budget.num_classes, budget.input_shape) == (48, 14, 1000, (3, 224, 224))
    cost = budget.measure(G.encode(G.DARTS_V2))
    assert cost['macs'] == 529_911_552 and round(cost['params'] / 1e6, 1) == 4.7
    assert budget.excess(cost) is None
    assert budget.excess({'macs': 700e6, 'params': 1}) == 'multiply-adds 700M > --flops_limit 600M'


def test_stage_3_defaults_are_the_budget_networks():
    from retrain.retrain import DEFAULTS
    assert DARTS.budget_shapes == {k: (DEFAULTS[k]['init_channels'], DEFAULTS[k]['layers'])
                                   for k in ('imagenet', 'cifar')}


def test_cheapest_cell_is_cheapest_and_limits_parse():
    budget = small_budget()
    cheapest = budget.measure(DARTS.cheapest_candidate())
    rng = random.Random(0)
    for _ in range(5):
        cost = budget.measure(DARTS.random_candidate(rng))
        assert cost['macs'] > cheapest['macs'] and cost['params'] > cheapest['params']
    assert parse_amount('600M') == parse_amount('0.6G') == parse_amount('6e8') == 6e8
    for bad in ('-5M', 'lots', '0', 'nan'):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_amount(bad)


def test_nb201_budgets_on_its_benchmark_network_only():
    nb201 = get_space('nb201')
    args = argparse.Namespace(flops_limit=None, params_limit=1e6, budget_network='imagenet', budget_channels=None,
                              budget_layers=None)
    with pytest.raises(UserError, match='--budget_network cifar'):
        make_budget(args, nb201, 10, (32, 32))
    args.budget_network = 'cifar'
    budget = make_budget(args, nb201, 10, (32, 32))
    assert (budget.channels, budget.layers) == (16, 5)
    convs = budget.measure([3] * 6)                 # nor_conv_3x3 everywhere
    assert budget.measure(nb201.cheapest_candidate())['params'] < convs['params']


class CountingBudget:
    """A budget with a cheap made-up cost (the number of convolution edges); counts measurements per candidate."""

    def __init__(self, limit):
        self.limit, self.measured = limit, Counter()

    def measure(self, cand):
        self.measured[cand_key(cand)] += 1
        return {'macs': sum(c >= 4 for c in cand), 'params': 0}

    def excess(self, cost):
        return f'{cost["macs"]} > {self.limit}' if cost['macs'] > self.limit else None


def evolve(budget, seed=3):
    evo = Evolution(max_epochs=4, population_num=10, select_num=3, mutation_num=4, crossover_num=4, seed=seed,
                    budget=budget)
    evo.start()
    while not evo.done:
        for cand in evo.pending():
            evo.record(cand, {'score': float(sum(cand))})      # favours convolutions: pushes against the limit
        evo.finish_generation()
    return evo


def test_evolution_proposes_only_candidates_within_the_limit_and_measures_each_once():
    budget = CountingBudget(limit=9)
    evo = evolve(budget)
    assert len(evo.scores) == 40
    for key, info in evo.scores.items():
        assert info['cost']['macs'] == sum(c >= 4 for c in key_cand(key)) <= 9
    assert set(budget.measured.values()) == {1}                    # the cost cache
    assert len(budget.measured) > len(evo.scores)                  # some proposals were over the limit
    assert sum(h['over_budget'] for h in evo.history) >= len(budget.measured) - len(evo.scores)   # refusals
    unlimited, loose = evolve(None), evolve(CountingBudget(limit=28))
    assert {k: v['score'] for k, v in loose.scores.items()} == {k: v['score'] for k, v in unlimited.scores.items()}


def test_random_start_gives_up_after_bounded_tries():
    budget = CountingBudget(limit=0)          # reachable in principle (all-pool cells) but never drawn at random
    with pytest.raises(UserError, match='none of 100 random candidates is within the cost limits'):
        Evolution(population_num=10, select_num=3, mutation_num=4, crossover_num=4, budget=budget).start()
    assert sum(budget.measured.values()) == len(budget.measured) <= 100


def test_given_cells_over_a_limit_are_not_scored_either():
    cheap, dear = DARTS.cheapest_candidate(), G.encode(G.GENAS_FLATNESS_CIFAR100)     # 0 and 11 convolutions
    notes = []
    kept = search.within_budget([('cheap', cheap), ('dear', dear)], CountingBudget(limit=9), notes)
    assert kept == [('cheap', cheap)] and notes == ['dear not scored: 11 > 9']
    assert search.within_budget([('dear', dear)], None, notes) == [('dear', dear)]


def cost_by_hand(net):
    """{'macs', 'params'} of a network counted here: every parameter, and per image the multiply-adds of its
    convolutions (output elements x inputs per output) and linear layers (in x out)."""
    macs = []

    def count(m, inputs, out):
        if isinstance(m, torch.nn.Conv2d):
            macs.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, torch.nn.Linear):
            macs.append(m.in_features * m.out_features)
    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return {'macs': sum(macs), 'params': sum(p.numel() for p in net.parameters())}


@pytest.mark.parametrize('flag, key', [('--flops_limit', 'macs'), ('--params_limit', 'params')])
def test_a_cell_at_the_limit_is_accepted_one_unit_over_refused(flag, key):
    cand = G.encode(G.DARTS_V2)
    cost = cost_by_hand(DARTS.budget_network('cifar', cand, 4, 10, 3))
    for limit, kept in ((cost[key], True), (cost[key] - 1, False)):
        args = search.parse_args(['--model_path', 'unused.pth.tar', flag, str(limit), *map(str, SMALL_NET)])
        budget = make_budget(args, DARTS, 10, (32, 32))
        notes = []
        assert search.within_budget([('DARTS_V2', cand)], budget, notes) == ([('DARTS_V2', cand)] if kept else [])
        assert len(notes) == (0 if kept else 1)


# --- the CLI --------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def supernet(tmp_path_factory):
    run = tmp_path_factory.mktemp('budget') / 'supernet'
    train.main(train.parse_args([str(a) for a in TINY_SUPERNET + ['--save', run]]))
    return ['--init_model_path', run / 'checkpoint_epoch_0.pth.tar', '--model_path', run / 'checkpoint_epoch_1.pth.tar']


def median_cost():
    """The median multiply-adds of 9 random cells on the small network: a limit that refuses about half."""
    budget, rng = small_budget(), random.Random(1)
    return sorted(budget.measure(DARTS.random_candidate(rng))['macs'] for _ in range(9))[4]


def test_search_never_scores_a_candidate_over_the_limit(supernet, tmp_path, monkeypatch, capsys):
    limit = median_cost()
    scored = []
    angle = runner.METRICS['angle']
    monkeypatch.setitem(runner.METRICS, 'angle', lambda ctx, cand: scored.append(list(cand)) or angle(ctx, cand))
    run = tmp_path / 'run'
    assert cli_exit_code(search, supernet + SEARCH + SMALL_NET + ['--flops_limit', limit, '--save', run]) == 0
    budget = small_budget(flops_limit=limit)
    assert len(scored) == len({cand_key(c) for c in scored}) == 18
    for cand in scored:                                           # measured again, independently
        assert budget.measure(cand)['macs'] <= limit
    doc = json.loads((run / 'genotype.json').read_text())
    assert doc['budget']['flops_limit'] == limit and 'C=4, 3 cells' in doc['budget']['network']
    assert all(t['cost'] == budget.measure(t['candidate']) for t in doc['top10'])
    gens = [json.loads(ln) for ln in (run / 'metrics.jsonl').read_text().splitlines()]
    assert all(t['cost']['macs'] <= limit for g in gens for t in g['top_k'])
    assert sum(g['over_budget'] for g in gens) > 0                 # the limit did refuse proposals
    assert all((run / name).read_bytes()[:4] == b'\x89PNG' for name in ('search_progress.png', 'pareto.png'))


def test_impossible_limit_is_one_error_line_and_overwrites_nothing(supernet, tmp_path, capsys):
    run = tmp_path / 'run'
    assert cli_exit_code(search, supernet + SEARCH + SMALL_NET + ['--save', run, '--stop_after', 2]) == 0
    before = snapshot_dir(run)
    capsys.readouterr()
    code = cli_exit_code(search, supernet + SEARCH + SMALL_NET + ['--params_limit', '1k', '--save', run, '--restart'])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith('error: no candidate can meet the cost limits: even the cheapest cell has parameters')
    assert snapshot_dir(run) == before


def test_limits_are_part_of_the_resume_check(supernet, tmp_path, capsys):
    run = tmp_path / 'run'
    limit = median_cost()
    base = supernet + SEARCH + ['--budget_network', 'cifar', '--budget_layers', 3, '--save', run]
    assert cli_exit_code(search, base + ['--budget_channels', 4, '--flops_limit', limit, '--stop_after', 2]) == 0
    before = snapshot_dir(run)
    for other, change in ((['--budget_channels', 4, '--flops_limit', limit + 1], f'--flops_limit {float(limit)} ->'),
                          (['--budget_channels', 4], f'--flops_limit {float(limit)} -> None'),
                          (['--budget_channels', 6, '--flops_limit', limit], '--budget_channels 4 -> 6')):
        capsys.readouterr()
        code = cli_exit_code(search, base + other)
        err = capsys.readouterr().err
        assert code == 2 and 'was written with other flags' in err and change in err, err
        assert len(err.strip().splitlines()) == 1 and snapshot_dir(run) == before
