import argparse
import copy
import math
import random

import pytest
import torch

import genotypes as G
from data import ArrayData, SearchData, load_search_data, synthetic_arrays
from evolutionary_search import metrics as M
from spaces.darts import angle_vector, cell_paths
from spaces.darts_supernet import Network


def tiny_data():
    args = argparse.Namespace(dataset='synthetic', data=None, download=False, split_data=1, train_portion=0.5,
                              split_seed=0, split_file=None, train_subset=256, valid_subset=128, random_label=0)
    return load_search_data(args)


@pytest.fixture(scope='module')
def ctx():
    torch.manual_seed(1)
    init = Network(4, 10, 3)
    torch.manual_seed(2)
    model = Network(4, 10, 3).eval()
    return M.ScoringContext(model=model, init_model=init, data=tiny_data(), device=torch.device('cpu'), seed=0,
                            batch_size=32, test_batch_size=40, max_train_img_size=64, max_val_img_size=96,
                            acc_train_img_size=96, acc_val_img_size=64, wlm_weight=2.0, acc_weight=3.0)


CAND = G.encode(G.GENAS_FLATNESS_CIFAR10)


def test_wlm_formula_by_hand():
    wlm, poor = M.wlm_from_losses([1.0, 1.2, 1.5], [0.001, 0.003, 0.006])
    assert poor == pytest.approx(1.0 / 0.001 + 0.2 / 0.002 + 0.3 / 0.003)
    assert wlm == pytest.approx(1 / (1200 + 1e-5), rel=1e-12)
    wlm, poor = M.wlm_from_losses([2.0, 1.0], [0.5, 1.0])        # absolute values of falling losses
    assert poor == pytest.approx(4.0 + 2.0)


@pytest.mark.parametrize('metric', sorted(M.METRICS))
def test_scoring_leaves_the_supernet_bit_identical(ctx, metric):
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    momenta = [m.momentum for m in ctx.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    info = M.METRICS[metric](ctx, CAND)
    assert math.isfinite(info['score'])
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert momenta == [m.momentum for m in ctx.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_combinations_follow_the_reference_formulas(ctx):
    a, w, acc = M.score_angle(ctx, CAND), M.score_wlm(ctx, CAND), M.score_acc(ctx, CAND)
    aw, aa = M.score_angle_wlm(ctx, CAND), M.score_angle_acc(ctx, CAND)
    assert aw['score'] == pytest.approx(a['score'] / math.pi + 2.0 / 0.001 * w['score'], rel=1e-12)
    assert aa['score'] == pytest.approx(a['score'] / math.pi + 3.0 * acc['score'], rel=1e-12)
    accw = M.score_acc_wlm(ctx, CAND)      # its acc term uses acc_train/val_img_size
    acc2 = M.recalibrated_accuracy(ctx, CAND, 96, 64).acc
    assert accw['acc'] == acc2 and accw['score'] == pytest.approx(acc2 + 2.0 / 0.001 * w['score'], rel=1e-12)
    assert aw['angle'] == a['angle'] and aw['wlm'] == w['wlm']


def test_acc_equals_plain_pytorch_by_hand(ctx):
    cand = G.random_candidate(random.Random(5))
    ev = M.recalibrated_accuracy(ctx, cand, 64, 96)
    net = copy.deepcopy(ctx.model)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for x, _ in M.bn_batches(ctx, 64):                # 2 batches of 32, augmented, seeded
            net.forward_candidate(x, cand)
        net.eval()
        idx = ctx.data.valid_idx[:96]
        x = (ctx.data.valid.images[idx].float().expand(-1, 3, -1, -1) / 255 - torch.tensor(ctx.data.valid.mean).view(1, 3, 1, 1)) \
            / torch.tensor(ctx.data.valid.std).view(1, 3, 1, 1)
        logits = net.forward_candidate(x, cand)
    y = ctx.data.valid.labels[idx]
    assert ev.acc == (logits.argmax(1) == y).sum().item() / len(y)
    assert ev.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def constant_split(train_value, valid_value, n=64):
    """A split whose train part holds only images of the pixel value `train_value` and whose valid part only
    images of `valid_value` (uint8, 3x32x32)."""
    labels = torch.arange(n) % 10
    train, valid = (ArrayData(torch.full((n, 3, 32, 32), v, dtype=torch.uint8), labels, 10, MEAN, STD)
                    for v in (train_value, valid_value))
    return SearchData(train, torch.arange(n), valid, torch.arange(n), 10)


@pytest.mark.parametrize('metric', ['acc', 'wlm'])
def test_bn_statistics_come_from_the_training_images(ctx, metric):
    """The stem BN's statistics that acc and wlm evaluate with are those of the train part: computed here by
    hand from the train images (all 0: random crops with zero padding and flips leave them all 0, so every
    batch is the same constant image), not through bn_batches; the valid images (all 255) would give others."""
    small = copy.copy(ctx)
    small.data, small.max_train_img_size, small.max_val_img_size, small.batch_size = constant_split(0, 255), 64, 32, 32
    pixel = ((0 - torch.tensor(MEAN) * 255) / (torch.tensor(STD) * 255)).view(1, 3, 1, 1)
    stem_conv, stem_bn = ctx.model.stem
    with torch.no_grad():
        y = torch.nn.functional.conv2d(pixel.expand(32, 3, 32, 32), stem_conv.weight, padding=1)
    expected_mean, expected_var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=True)
    seen = []
    hook = stem_bn.register_forward_hook(
        lambda m, inputs, out: None if m.training else seen.append((m.running_mean.clone(), m.running_var.clone())))
    try:
        M.METRICS[metric](small, CAND)
    finally:
        hook.remove()
    mean, var = seen[0]         # the first evaluation after the recalibration
    assert torch.allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(var, expected_var, rtol=1e-4, atol=1e-7)


def test_tiny_stds_give_the_unperturbed_loss(ctx):
    small = copy.copy(ctx)
    small.stds = (1e-12, 2e-12, 3e-12)
    losses = M.perturbed_losses(small, CAND)
    clean = M.recalibrated_accuracy(ctx, CAND, ctx.max_train_img_size, ctx.max_val_img_size).loss
    assert losses == pytest.approx([clean] * 3, rel=1e-6)
    big = copy.copy(ctx)
    big.stds = (0.05, 0.1)
    assert M.perturbed_losses(big, CAND)[1] != pytest.approx(clean, rel=1e-3)


def test_direct_and_cumulative_share_the_first_level(ctx):
    c, d = copy.copy(ctx), copy.copy(ctx)
    c.stds = d.stds = (0.01, 0.02)
    d.perturb = 'direct'
    lc, ld = M.perturbed_losses(c, CAND), M.perturbed_losses(d, CAND)
    assert lc[0] == ld[0] and lc[1] != ld[1]


def test_off_path_parameters_cannot_change_the_loss(ctx):
    """Why perturbing only the path suffices: noise on every other parameter leaves the loss unchanged."""
    net = copy.deepcopy(ctx.model)
    on_path = {id(p) for p in net.path_parameters(CAND)}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = net.forward_candidate(x, CAND)
        for p in net.parameters():
            if id(p) not in on_path:
                p.add_(torch.randn_like(p))
        assert torch.equal(net.forward_candidate(x, CAND), before)


def test_scores_are_pure_functions_of_the_candidate(ctx):
    other = G.random_candidate(random.Random(9))
    first = M.score_wlm(ctx, CAND)
    M.score_wlm(ctx, other)
    M.score_acc(ctx, other)
    assert M.score_wlm(ctx, CAND) == first


def test_test_batch_size_does_not_change_scores(ctx):
    other = copy.copy(ctx)
    other.test_batch_size = 96
    a, b = M.score_wlm(ctx, CAND), M.score_wlm(other, CAND)
    assert b['losses'] == pytest.approx(a['losses'], rel=1e-5)


def test_angle_properties(ctx):
    assert M.angle(ctx.model, ctx.model, CAND, ctx.space) == pytest.approx(0.0, abs=1e-6)
    info = M.score_angle(ctx, CAND)
    assert 0 < info['angle'] <= math.pi and info['angle_normalized'] == info['angle'] / math.pi
    flipped = copy.deepcopy(ctx.model)
    with torch.no_grad():
        for p in flipped.parameters():
            p.neg_()
    # every weight negated: only the constant pooling / identity entries keep the angle below pi
    assert M.angle(ctx.model, flipped, CAND, ctx.space) > math.pi / 2


def test_cell_paths_are_the_30_dag_paths():
    paths = cell_paths()
    assert len(paths) == 30 and len({tuple(p) for p in paths}) == 30
    assert paths[:4] == [[0], [1], [2], [3]] and [0, 4, 8, 13] in paths


def test_angle_vector_layout_by_hand():
    torch.manual_seed(0)
    net = Network(C=2, num_classes=3, layers=2)         # two cells, both reduction cells
    reduce = [4, 3, 0, 6, 1, 2, 0, 0, 3, 0, 0, 5, 0, 7]
    cand = G.encode(G.DARTS_V2)[:14] + reduce
    assert G.is_valid(cand)

    def weights(cell, edge):
        op = cell.edges[edge].ops[reduce[edge]]
        code = reduce[edge]
        if code in (4, 5):
            s = op.op
            return [s[1].weight, s[2].weight, s[5].weight, s[6].weight, s[3].weight, s[3].bias, s[7].weight, s[7].bias]
        if code in (6, 7):
            s = op.op
            return [s[1].weight, s[2].weight, s[3].weight, s[3].bias]
        if code in (1, 2):
            C = op[1].num_features
            return [torch.full((C, 3, 3), 1 / 9), op[1].weight, op[1].bias]
        if edge < 2 or edge in (2, 3, 5, 6, 9, 10):   # stride-2 skip: factorized reduce
            return [op.conv_1.weight, op.conv_2.weight, op.bn.weight, op.bn.bias]
        return [torch.eye(cell.edges[edge].channels).flatten()]

    # every path from an input to a node that avoids `none` edges, in the documented order
    paths = [[0], [1], [3], [0, 4], [1, 4], [5], [3, 8], [0, 4, 8], [1, 4, 8], [0, 11], [1, 11], [5, 13],
             [3, 8, 13], [0, 4, 8, 13], [1, 4, 8, 13]]
    parts = []
    for cell in net.cells:
        for path in paths:
            for e in path:
                parts += weights(cell, e)
    parts += [net.stem[0].weight, net.stem[1].weight, net.stem[1].bias]
    c0, c1 = net.cells
    parts += [c0.preprocess0.op[1].weight, c0.preprocess0.op[2].weight, c0.preprocess0.op[2].bias,
              c0.preprocess1.op[1].weight, c0.preprocess1.op[2].weight, c0.preprocess1.op[2].bias,
              c1.preprocess0.conv_1.weight, c1.preprocess0.conv_2.weight, c1.preprocess0.bn.weight,
              c1.preprocess0.bn.bias,
              c1.preprocess1.op[1].weight, c1.preprocess1.op[2].weight, c1.preprocess1.op[2].bias,
              net.classifier.weight]
    by_hand = torch.cat([p.detach().reshape(-1).double() for p in parts])
    assert torch.equal(angle_vector(net, cand), by_hand)


def test_channels_last_scores_agree(ctx):
    cl = copy.copy(ctx)
    cl.model = copy.deepcopy(ctx.model).to(memory_format=torch.channels_last)
    cl.memory_format = torch.channels_last
    for metric in ('wlm', 'acc'):
        a, b = M.METRICS[metric](ctx, CAND), M.METRICS[metric](cl, CAND)
        assert b['score'] == pytest.approx(a['score'], rel=1e-5)


@pytest.mark.parametrize('precision', ['bf16', 'tf32'])
def test_reduced_precision_scoring_runs_and_restores(ctx, precision):
    low = copy.copy(ctx)
    low.precision = precision
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    info = M.score_wlm(low, CAND)
    assert math.isfinite(info['score']) and len(info['losses']) == 3
    assert all(torch.equal(v, before[k]) for k, v in ctx.model.state_dict().items())
    if precision == 'tf32':      # no effect on a CPU: identical to fp32
        assert info == M.score_wlm(ctx, CAND)


def test_kendall_tau_by_hand():
    from proxy_study.stats import kendall_tau       # the one benchmarks/precision_tau.py reports
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx((5 - 1) / 6)     # one discordant pair of 6
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(3 * 2))  # tau-b with a tie
    assert kendall_tau([3, 2, 1], [1, 2, 3]) == -1.0
    assert math.isnan(kendall_tau([2, 2, 2], [1, 2, 3]))                          # undefined: constant scores


def test_formula_of_each_combined_metric_and_the_weight_that_reduces_it():
    stds = [0.001, 0.003, 0.006]
    assert M.formula('angle+wlm', 16.0, 0.0, stds) == 'angle / pi + 16 / 0.001 * wlm'
    assert M.formula('acc+wlm', 0.5, 0.0, stds) == 'acc + 0.5 / 0.001 * wlm'
    assert M.formula('angle+acc', 0.0, 2.0, stds) == 'angle / pi + 2 * acc'
    assert M.formula('angle+wlm', 0.0, 5.0, stds) == 'angle / pi'          # the reference's default weight 0
    assert M.formula('wlm', 0.0, 0.0, stds) == 'wlm'
    assert M.reduced_to_one_term('angle+wlm', 0.0, 1.0) == 'wlm_weight'
    assert M.reduced_to_one_term('angle+acc', 1.0, 0.0) == 'acc_weight'
    assert M.reduced_to_one_term('angle+acc', 0.0, 1.0) is None and M.reduced_to_one_term('wlm', 0, 0) is None


@pytest.mark.parametrize('argv, warned', [
    (['--metric', 'angle+wlm'], '--metric angle+wlm with --wlm_weight 0 scores angle / pi alone'),
    (['--metric', 'acc+wlm'], '--metric acc+wlm with --wlm_weight 0 scores acc alone'),
    (['--metric', 'angle+acc', '--wlm_weight', '3'], '--metric angle+acc with --acc_weight 0 scores angle / pi'),
    (['--metric', 'angle+wlm', '--wlm_weight', '16'], None),
    (['--metric', 'wlm'], None),
])
def test_stage_2_warns_once_when_a_weight_reduces_the_metric_to_one_term(argv, warned, capsys):
    from evolutionary_search import search
    search.parse_args(['--model_path', 'x.pth.tar', '--init_model_path', 'y.pth.tar', *argv])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('warning:')]
    assert lines == ([] if warned is None else [lines[0]]) and (warned is None or warned in lines[0])
def test_bn_images_per_candidate_are_a_function_of_the_candidate():
    data = SearchData(synthetic_arrays(256), torch.arange(128), synthetic_arrays(256), torch.arange(128, 256), 10)
    a, b = [0] * 28, [1] * 28

    def first(ctx, cand):
        return next(iter(M.bn_batches(ctx, 32, cand)))[0]
    shared = M.ScoringContext(model=None, init_model=None, data=data, device=torch.device('cpu'), seed=3,
                              batch_size=32)
    per = M.ScoringContext(**{**shared.__dict__, 'bn_per_candidate': True})
    assert torch.equal(first(shared, a), first(shared, b))
    assert torch.equal(first(per, a), first(per, a)) and not torch.equal(first(per, a), first(per, b))
