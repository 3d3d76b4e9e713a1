"""The zero-cost proxies (evolutionary_search/zero_cost.py) and the new stage-2 metrics against hand
computations: synflow on a 2-layer linear net, NASWOT on a hand-built activation pattern, grad_norm and
SNIP by plain autograd, wlm_l0 from its losses."""
import contextlib
import copy
import math

import pytest
import torch
import torch.nn as nn

import genotypes as G
from evolutionary_search import metrics as M
from evolutionary_search import zero_cost as Z
from spaces.darts_network import NetworkCIFAR
from test_metrics import tiny_data
from spaces.darts_supernet import Network
from counting import count_parameters

CAND = G.encode(G.GENAS_FLATNESS_CIFAR10)


def linear_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))


def test_synflow_of_a_two_layer_linear_net_by_hand():
    net = linear_net()
    w1, w2 = net[0].weight.detach().abs().double(), net[1].weight.detach().abs().double()
    # R = 1^T |W2| |W1| 1; dR/dW1 = (1^T |W2|)^T 1^T and dR/dW2 = 1 (|W1| 1)^T, so each layer's
    # sum of theta * dR/dtheta is R itself: synflow = 2 R
    r = torch.ones(2, dtype=torch.float64) @ w2 @ w1 @ torch.ones(3, dtype=torch.float64)
    assert Z.synflow(net, (3,)) == pytest.approx(2 * r.item(), rel=1e-12)


def test_naswot_kernel_and_logdet_by_hand():
    codes = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    # K = units minus Hamming distance: d(0,1) = 2, d(0,2) = 1, d(1,2) = 3
    kernel = Z.naswot_kernel(codes)
    assert kernel.tolist() == [[3, 1, 2], [1, 3, 0], [2, 0, 3]]
    assert Z.naswot_logdet(kernel) == pytest.approx(math.log(12))        # det = 27 - 3 - 12
    assert Z.naswot_logdet(Z.naswot_kernel(torch.tensor([[1, 0], [1, 0]]))) == -math.inf


def test_naswot_reads_the_relu_pattern_of_a_network():
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
    net = nn.Sequential(lin, nn.ReLU())
    x = torch.tensor([[1., -1., 1.], [1., 1., -1.], [-1., -1., 1.]])      # signs give the pattern above
    assert Z.naswot(net, x) == pytest.approx(math.log(12))
    # two ReLUs firing the same pattern add their kernels: log det(2K) = log(8 * 12)
    assert Z.naswot(nn.Sequential(lin, nn.ReLU(), nn.ReLU()), x) == pytest.approx(math.log(96))


def test_grad_norm_and_snip_by_autograd():
    net = linear_net()
    x, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 1, 0, 1])
    ref = copy.deepcopy(net)
    loss = nn.functional.cross_entropy(ref(x), y)
    g1, g2 = torch.autograd.grad(loss, [ref[0].weight, ref[1].weight])
    assert Z.grad_norm(copy.deepcopy(net), x, y) == pytest.approx((g1.norm() + g2.norm()).item(), rel=1e-6)
    expected = (ref[0].weight * g1).abs().sum() + (ref[1].weight * g2).abs().sum()
    assert Z.snip(copy.deepcopy(net), x, y) == pytest.approx(expected.item(), rel=1e-6)


def test_wlm_l0_formula_by_hand():
    wlm, poor = M.wlm_l0_from_losses([0.5, 1.0, 1.2, 1.5], [0.001, 0.003, 0.006])
    assert poor == pytest.approx(0.5 / 0.001 + 0.2 / 0.002 + 0.3 / 0.003)
    assert wlm == pytest.approx(1 / (700 + 1e-5), rel=1e-12)
    # the reference's wlm takes L0 = 0: the same losses give 1 / (1.0 / 0.001 + ...)
    assert M.wlm_from_losses([1.0, 1.2, 1.5], [0.001, 0.003, 0.006])[1] == pytest.approx(1200)


@pytest.fixture(scope='module')
def ctx():
    torch.manual_seed(1)
    init = Network(4, 10, 3)
    torch.manual_seed(2)
    model = Network(4, 10, 3).eval()
    return M.ScoringContext(model=model, init_model=init, data=tiny_data(), device=torch.device('cpu'), seed=0,
                            batch_size=32, test_batch_size=40, max_train_img_size=64, max_val_img_size=96,
                            wlm_weight=2.0, acc_weight=3.0)


def test_wlm_l0_measures_the_clean_loss_and_shares_the_noise_of_wlm(ctx):
    info = M.score_wlm_l0(ctx, CAND)
    clean = M.recalibrated_accuracy(ctx, CAND, 64, 96).loss
    losses = M.perturbed_losses(ctx, CAND)
    assert info['loss'] == clean and info['losses'] == losses == M.score_wlm(ctx, CAND)['losses']
    assert info['score'] == M.wlm_l0_from_losses([clean] + losses, ctx.stds)[0]
    assert info['score'] != M.score_wlm(ctx, CAND)['score']


def test_cache_changes_no_score(ctx):
    cached = copy.copy(ctx)
    cached.cache = {}
    for name in M.METRICS:
        assert M.METRICS[name](cached, CAND) == M.METRICS[name](ctx, CAND), name
    assert ('wlm', tuple(CAND)) in {k[0][:2] for k in cached.cache}


def test_standalone_metrics_use_the_network_at_initialisation(ctx):
    other = copy.copy(ctx)
    other.standalone_channels, other.standalone_layers = 6, 4
    net = NetworkCIFAR(6, 10, 4, False, G.decode(CAND))
    assert M.score_params(other, CAND)['params'] == count_parameters(net)
    assert M.score_params(ctx, CAND)['params'] == count_parameters(NetworkCIFAR(4, 10, 3, False, G.decode(CAND)))
    # seeded by (seed, candidate): the same seed gives the same score, another seed another one
    reseeded = copy.copy(ctx)
    reseeded.seed = 1
    for name in ('synflow', 'naswot', 'grad_norm', 'snip'):
        a = M.METRICS[name](ctx, CAND)['score']
        assert M.METRICS[name](ctx, CAND)['score'] == a and math.isfinite(a)
        assert M.METRICS[name](reseeded, CAND)['score'] != a, name
    rng_before = torch.get_rng_state()
    M.score_synflow(ctx, CAND)
    assert torch.equal(torch.get_rng_state(), rng_before)



@pytest.mark.parametrize('name', list(M.METRICS))
def test_every_metric_runs_under_the_scoring_precision(ctx, name, monkeypatch):
    """TF32 and cuDNN benchmark are on outside (as a training process leaves them); inside every metric (seen where
    it builds its network, draws its batches or reads its weights) the fp32 scoring context has them off, bf16
    scoring enters autocast; they are restored afterwards."""
    seen = []

    def spy(real):
        def call(*args, **kwargs):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                         torch.backends.cudnn.benchmark, torch.is_autocast_enabled('cpu')))
            return real(*args, **kwargs)
        return call

    for owner, attr in ((M, 'standalone_network'), (M, 'bn_batches'), (ctx.space, 'angle_vector')):
        monkeypatch.setattr(owner, attr, spy(getattr(owner, attr)))
    with _backend_flags(True):
        M.METRICS[name](ctx, CAND)
        fp32 = len(seen)
        low = copy.copy(ctx)
        low.precision = 'bf16'
        M.METRICS[name](low, CAND)
        assert fp32 and set(seen[:fp32]) == {(False, False, False, False)}, seen
        assert set(seen[fp32:]) == {(False, False, False, True)}, seen
        assert _backend_flag_values() == (True, True, True)


def _backend_flag_values():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark


@contextlib.contextmanager
def _backend_flags(value):
    """TF32 (cuBLAS, cuDNN) and cuDNN benchmark set to value, restored afterwards. Set by hand, not with
    monkeypatch: the cuBLAS flag lives behind its module's __getattr__/__setattr__, not in its __dict__, so
    pytest 9.2's monkeypatch records it as absent and its undo fails deleting it."""
    old = _backend_flag_values()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = value
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = old


def test_naswot_of_a_stand_alone_network_counts_every_cells_preprocessing_relu():
    """NetworkCIFAR rectifies each cell output once by default (torch.relu, no module); NASWOT's kernel sums the
    patterns of the nn.ReLU modules, each cell's preprocessing ones included, as with the reference's network."""
    import genotypes
    from evolutionary_search.zero_cost import naswot
    from spaces import get_space
    torch.manual_seed(0)
    net = get_space('darts').network(genotypes.DARTS_V2, 4, 10, 3, auxiliary=False)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fired = []
    handles = [m.register_forward_hook(lambda *a: fired.append(1)) for m in net.modules()
               if isinstance(m, torch.nn.ReLU)]
    score = naswot(net, x)
    counted = len(fired)
    net.share_relu = False
    fired.clear()
    assert naswot(net, x) == score
    assert counted == len(fired) and counted >= 2 * len(net.cells)
    for h in handles:
        h.remove()


@pytest.mark.parametrize('proxy', ['grad_norm', 'snip', 'synflow'])
def test_gradient_proxies_do_not_depend_on_the_gradient_form(proxy):
    """Scores come from PyTorch's own kernels whatever gradient form training runs (a score file extended later
    keeps its scores bit for bit)."""
    import operations
    scores = []
    for form in operations.GRAD_FORMS:
        torch.manual_seed(0)
        net = NetworkCIFAR(8, 10, 5, False, G.GENAS_FLATNESS_CIFAR10).to(memory_format=torch.channels_last)
        x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        x, y = x.to(memory_format=torch.channels_last), torch.arange(16) % 10
        with operations.using_grad_form(form):
            scores.append(Z.synflow(net, (3, 32, 32)) if proxy == 'synflow' else getattr(Z, proxy)(net, x, y))
    assert scores[0] == scores[1] == scores[2]
