"""The NAS-Bench-201 space: encoding against the benchmark's own index, the networks against the
benchmark's parameter counts, the supernet against the stand-alone network, the angle by hand."""
import math
import random
from pathlib import Path

import pytest
import torch

from evolutionary_search import metrics as M
from spaces import get_space, nb201
from spaces.nb201_model import NB201Network, NB201Supernet, angle_vector, cell_paths, standalone_from_supernet

FAKE = Path(__file__).resolve().parent / 'fixtures' / 'nats-tss-fake' / 'NATS-tss-v1_0-3ffb9-simple'
# The three cells whose records the NATS-Bench test folder holds.
CELL_11 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|'


@pytest.fixture(scope='module')
def bench():
    pytest.importorskip('nats_bench')
    from spaces.nb201_bench import Benchmark
    return Benchmark(str(FAKE))


def test_all_cells_round_trip_between_ints_arch_strings_and_benchmark_index(bench):
    meta = bench.api.meta_archs
    assert len(meta) == nb201.NUM_CELLS == 15625
    seen = set()
    for index, arch in enumerate(meta):
        cand = bench.index.candidate(index)
        assert nb201.to_arch_string(cand) == arch
        assert nb201.from_arch_string(arch) == cand
        assert bench.index.index(cand) == index
        assert bench.api.query_index_by_arch(arch) == index         # the API agrees
        seen.add(nb201.code_number(cand))
    assert seen == {nb201.code_number(c) for c in nb201.all_candidates()} == set(range(15625))


def test_arch_string_layout_and_errors():
    assert nb201.from_arch_string(CELL_11) == [3, 3, 4, 0, 3, 4]
    assert nb201.parse('3, 3 4,0 3 4') == nb201.parse(CELL_11)
    for bad in ['|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|',                    # two nodes
                CELL_11.replace('avg_pool_3x3~1', 'avg_pool_3x3~0'),                     # wrong input
                CELL_11.replace('none', 'max_pool_3x3'), '3,3,4,0,3', '3,3,4,0,3,5']:
        with pytest.raises(nb201.NB201Error):
            nb201.parse(bad)


@pytest.mark.parametrize('index', [0, 11, 284])
def test_standalone_network_has_the_benchmarks_parameter_count(bench, index):
    cand = bench.index.candidate(index)
    for dataset, classes in (('cifar10', 10), ('cifar100', 100), ('imagenet16-120', 120)):
        net = NB201Network(cand, C=16, num_classes=classes, layers=5)
        assert sum(p.numel() for p in net.parameters()) == round(bench.record(cand, dataset).params_m * 1e6)


def test_supernet_path_computes_the_standalone_network():
    torch.manual_seed(0)
    net = NB201Supernet(C=4, num_classes=3, layers=1)
    x = torch.randn(4, 3, 16, 16)
    for cand in ([3, 3, 4, 0, 3, 4], [0, 0, 0, 0, 0, 0], [1, 2, 0, 4, 0, 1], [0, 1, 2, 3, 4, 0]):
        fixed = standalone_from_supernet(net, cand)
        for train_mode in (False, True):
            net.train(train_mode)
            fixed.train(train_mode)
            assert torch.equal(net(x, cand), fixed(x)), (cand, train_mode)
        assert [p.shape for p in net.path_parameters(cand)] == [p.shape for p in fixed.parameters()]


def test_cell_paths_are_the_four_paths_from_input_to_output():
    assert cell_paths() == [[3], [0, 4], [1, 5], [0, 2, 5]]


def test_angle_equals_a_hand_computed_value():
    # Every parameter 1 in the initial supernet; the trained one differs only in cell 0's conv on edge 0,
    # whose weights are -1. Cell [3, 4, 1, 0, 1, 1]: conv, pool, skip, none, skip, skip; the paths
    # [0, 4] (conv, skip), [1, 5] (pool, skip), [0, 2, 5] (conv, skip, skip); [3] is cut by `none`.
    C, classes, cand = 2, 3, [3, 4, 1, 0, 1, 1]
    init, trained = NB201Supernet(C, classes, layers=1), NB201Supernet(C, classes, layers=1)
    for p in list(init.parameters()) + list(trained.parameters()):
        torch.nn.init.ones_(p)
    torch.nn.init.constant_(trained.cells[0].edges[0].ops[3].op[1].weight, -1.0)

    def cell(c):      # squared norm per cell: conv 9c^2 + BN 2c (twice); 4 identities (c ones each); pool 9c x 1/81
        return 2 * (9 * c * c + 2 * c) + 4 * c + 9 * c / 81

    def reduction(ci, co):
        return 9 * ci * co + 2 * co + 9 * co * co + 2 * co + ci * co
    norm2 = (cell(C) + cell(2 * C) + cell(4 * C) + 27 * C + 2 * C + reduction(C, 2 * C) + reduction(2 * C, 4 * C)
             + 2 * 4 * C + classes * 4 * C)
    flipped = 2 * 9 * C * C            # cell 0's conv weights, on two paths
    expected = math.acos((norm2 - 2 * flipped) / norm2)
    assert angle_vector(init, cand).norm().item() ** 2 == pytest.approx(norm2, rel=1e-9)   # 1/9 is a float32
    assert M.angle(init, trained, cand, get_space('nb201')) == pytest.approx(expected, rel=1e-9)
    assert M.angle(init, init, cand, get_space('nb201')) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope='module')
def ctx():
    from data import load_search_data
    import argparse
    args = argparse.Namespace(dataset='synthetic', data=None, split_data=1, train_portion=0.5, split_seed=0,
                              split_file=None, random_label=0, train_subset=96, valid_subset=64, download=False)
    torch.manual_seed(1)
    net = NB201Supernet(C=4, num_classes=10, layers=1)
    with torch.no_grad():           # "trained": BN affine away from 1 / 0 so that it matters
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return M.ScoringContext(model=net.eval(), init_model=None, data=load_search_data(args), device=torch.device('cpu'),
                            seed=5, batch_size=32, test_batch_size=32, max_train_img_size=64, max_val_img_size=64,
                            space=get_space('nb201'))


def _direct_recalibration(net, batches):
    """What recalibration means, written out on a plain network: fresh BN statistics, exact average."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for x, _ in batches:
            net(x)
    net.eval()


def _loss_acc(net, loader):
    with torch.no_grad():
        loss = correct = n = 0
        for x, y in loader:
            logits = net(x)
            loss += torch.nn.functional.cross_entropy(logits, y, reduction='sum').item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return loss / n, correct / n


def test_acc_and_flatness_equal_a_direct_computation_on_the_standalone_network(ctx):
    from seeding import derive_seed
    cand = [3, 2, 4, 0, 3, 1]
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    acc = M.score_acc(ctx, cand)
    wlm = M.score_wlm(ctx, cand)

    fixed = standalone_from_supernet(ctx.model, cand)
    _direct_recalibration(fixed, M.bn_batches(ctx, ctx.max_train_img_size))
    loss, top1 = _loss_acc(fixed, M.valid_loader(ctx, ctx.max_val_img_size))
    assert acc['acc'] == top1 and acc['loss'] == pytest.approx(loss, rel=1e-6)

    gen = torch.Generator().manual_seed(derive_seed(ctx.seed, 'noise', cand))
    losses, prev = [], 0.0
    with torch.no_grad():
        for s in ctx.stds:
            for p in fixed.parameters():
                p.add_(torch.randn(p.shape, generator=gen), alpha=s - prev)
            losses.append(_loss_acc(fixed, M.valid_loader(ctx, ctx.max_val_img_size))[0])
            prev = s
    assert wlm['losses'] == pytest.approx(losses, rel=1e-6)
    poor = losses[0] / 0.001 + abs(losses[1] - losses[0]) / 0.002 + abs(losses[2] - losses[1]) / 0.003
    assert wlm['wlm'] == pytest.approx(1 / (poor + 1e-5), rel=1e-5)
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in before.items())   # supernet untouched


def test_sampling_mutation_and_crossover_stay_in_the_space():
    space, rng = get_space('nb201'), random.Random(0)
    cands = [space.random_candidate(rng) for _ in range(3000)]
    assert all(len(c) == 6 and all(0 <= x <= 4 for x in c) for c in cands)
    counts = [sum(c[e] == op for c in cands) for e in range(6) for op in range(5)]
    assert min(counts) > 500 and max(counts) < 700           # uniform: 600 expected per (edge, op)
    a, b = [0] * 6, [4] * 6
    kids = [space.crossover(a, b, rng) for _ in range(200)]
    assert all(set(k) <= {0, 4} for k in kids) and len({tuple(k) for k in kids}) > 30
    assert space.mutate(a, rng, 0.0) == a
    changed = [sum(x != y for x, y in zip(a, space.mutate(a, rng, 1.0))) for _ in range(200)]
    assert sum(changed) / 200 == pytest.approx(6 * 4 / 5, abs=0.3)    # every edge redrawn, 4/5 change


def test_evolution_searches_the_nb201_space_without_repeats():
    from evolutionary_search.evolution import Evolution
    evo = Evolution(max_epochs=4, population_num=12, select_num=4, mutation_num=4, crossover_num=4, seed=1,
                    space=get_space('nb201'))
    target = [3, 3, 3, 3, 3, 3]
    evo.start()
    while not evo.done:
        for cand in evo.pending():
            assert len(cand) == 6
            evo.record(cand, {'score': float(sum(x == y for x, y in zip(cand, target)))})
        evo.finish_generation()
    assert len(evo.scores) == 48                                  # 4 x 12, none twice
    assert evo.history[-1]['best_score'] >= evo.history[0]['best_score']


def test_seeded_sample_of_cells():
    a, b = nb201.sample_candidates(100, seed=4), nb201.sample_candidates(100, seed=4)
    assert a == b and len({tuple(c) for c in a}) == 100 and a != nb201.sample_candidates(100, seed=5)
    assert len(nb201.sample_candidates(20000, seed=0)) == 15625
