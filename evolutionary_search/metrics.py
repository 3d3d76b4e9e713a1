"""Candidate scores for the evolutionary search. Higher is better for all.

    METRICS[name](ctx, candidate) -> {'score': float, <every component>}

- angle:     angle (radians) between the candidate's weight vector in the initial and the trained
             supernet (`angle_vector` gives the layout); also reported divided by pi.
- acc:       top-1 on the valid part after re-estimating the path's BN statistics.
- wlm:       flatness: 1 / (poor + 1e-5), poor from the losses under growing Gaussian weight noise.
- angle+wlm, acc+wlm, angle+acc: the reference's combinations: angle / pi + gamma / s1 * wlm,
             acc + gamma / s1 * wlm, angle / pi + acc_weight * acc.
- wlm_l0:    flatness with the clean loss L(0) at sigma 0 measured and used as the first point of the
             slope sum (the reference left this as a TODO and takes L(0) = 0, which makes wlm mostly
             1 / loss); `wlm` stays the reference's.
- params, macs, synflow, naswot, grad_norm, snip: baselines of the zero-cost-proxy literature, on the
             stand-alone network of the candidate at initialisation (`standalone_network`).

A score is a pure function of (candidate, ctx.seed, checkpoints, data): BN batches come from the seed
alone (every candidate sees the same images; from (seed, candidate) with bn_per_candidate), the weight
noise and a stand-alone network's initial weights from (seed, candidate).
"""
import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from data import BatchLoader
from evolutionary_search import zero_cost
from spaces import get_space
from spaces.supernet import PathEval, evaluate_candidate
from counting import count_macs, count_parameters
from seeding import derive_seed
from utils import UserError

WLM_EPS = 1e-5


@dataclass
class ScoringContext:
    model: torch.nn.Module            # trained supernet
    init_model: torch.nn.Module       # supernet with the initial weights (angle only; may be None)
    data: object                      # data.SearchData
    device: torch.device
    seed: int = 0
    stds: tuple = (0.001, 0.003, 0.006)
    batch_size: int = 64              # BN recalibration batches
    test_batch_size: int = 64         # validation chunks (free in eval mode: speed only)
    max_train_img_size: int = 850
    max_val_img_size: int = 25000
    acc_train_img_size: int = 15000   # the acc term of acc+wlm, as the reference
    acc_val_img_size: int = 25000
    wlm_weight: float = 0.0
    acc_weight: float = 0.0
    bn_momentum: float = None         # None: exact cumulative average
    perturb: str = 'cumulative'       # or 'direct'
    memory_format: torch.memory_format = torch.contiguous_format
    precision: str = 'fp32'           # numerics of scoring forwards, see `precision`
    bn_per_candidate: bool = False    # BN recalibration images drawn per candidate (the reference draws fresh ones)
    space: object = None              # spaces.SearchSpace of the supernets; None: the default space
    standalone_channels: int = None   # C / cells of the stand-alone networks of the zero-cost metrics;
    standalone_layers: int = None     # None: the supernet's
    cache: dict = None                # a dict: metrics of one candidate share their parts (see `cached`)

    def __post_init__(self):
        if self.space is None:
            self.space = get_space(None)


PRECISIONS = ('fp32', 'tf32', 'bf16', 'fp16')


@contextmanager
def precision(ctx):
    """fp32 (TF32 off, also for cuDNN convolutions, where PyTorch allows it by default), tf32, or bf16 /
    fp16 autocast; cuDNN benchmark off (its timed choice of algorithm could differ between processes). Reduced
    precision can hide a 0.001 weight perturbation: measure the ranking first (benchmarks/precision_tau.py).
    Every metric of METRICS runs under it (see `scored`); nested use keeps the outer settings."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = ctx.precision == 'tf32'
    torch.backends.cudnn.benchmark = False
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(ctx.precision)
    try:
        with torch.autocast(ctx.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = flags


def scored(metric):
    """metric(ctx, candidate) run under precision(ctx): how every entry of METRICS is defined."""
    @functools.wraps(metric)
    def run(ctx, candidate):
        with precision(ctx):
            return metric(ctx, candidate)
    return run


# --- angle ---------------------------------------------------------------------------------------

def angle(init_model, model, candidate, space):
    """Angle in radians (0..pi) between the candidate's initial and trained weight vectors; the vector
    layout is the search space's."""
    a, b = space.angle_vector(init_model, candidate), space.angle_vector(model, candidate)
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    return float(torch.arccos(cos.clamp(-1.0, 1.0)))


# --- data-driven metrics ----------------------------------------------------------------------------

def bn_batches(ctx, n_images, candidate=None):
    """ceil(n_images / batch_size) augmented training batches: the same for every candidate, or with
    ctx.bn_per_candidate drawn from (seed, candidate), so still a pure function of the candidate."""
    seed = derive_seed(ctx.seed, 'bn', list(candidate)) if ctx.bn_per_candidate else derive_seed(ctx.seed, 'bn')
    loader = BatchLoader(ctx.data.train, ctx.data.train_idx, ctx.batch_size, ctx.device, shuffle=True, augment=True,
                         seed=seed, memory_format=ctx.memory_format)
    n_batches = min(math.ceil(n_images / ctx.batch_size), len(loader))
    it = iter(loader)
    return (next(it) for _ in range(n_batches))


def valid_loader(ctx, n_images):
    """The first n_images of the valid part (fixed order), in chunks of test_batch_size."""
    idx = ctx.data.valid_idx[:n_images]
    return BatchLoader(ctx.data.valid, idx, ctx.test_batch_size, ctx.device, memory_format=ctx.memory_format)


def recalibrated_accuracy(ctx, candidate, train_images, val_images) -> PathEval:
    """PathEval(loss, acc) on val_images of the valid part after BN recalibration on train_images training
    images; the supernet is restored afterwards."""
    with ctx.model.preserved_path(candidate), precision(ctx):
        ctx.model.recalibrate_bn(candidate, bn_batches(ctx, train_images, candidate), momentum=ctx.bn_momentum)
        return evaluate_candidate(ctx.model, candidate, valid_loader(ctx, val_images))


def wlm_from_losses(losses, stds):
    """The reference's flatness: poor = |L1 / s1| + sum_i |(L_{i+1} - L_i) / (s_{i+1} - s_i)|; wlm = 1 / (poor + 1e-5)."""
    poor = abs(losses[0] / stds[0])
    poor += sum(abs((losses[i + 1] - losses[i]) / (stds[i + 1] - stds[i])) for i in range(len(stds) - 1))
    return 1.0 / (poor + WLM_EPS), poor


def wlm_l0_from_losses(losses, stds):
    """The slope sum with the measured clean loss L0 = losses[0] at s0 = 0 as its first point:
    poor = sum_{i=0..K-1} |(L_{i+1} - L_i) / (s_{i+1} - s_i)|; wlm = 1 / (poor + 1e-5). The losses are
    shifted by L0, which turns the reference's first term |L1 / s1| into |(L1 - L0) / s1|."""
    return wlm_from_losses([loss - losses[0] for loss in losses[1:]], stds)


@torch.no_grad()
def perturbed_losses(ctx, candidate):
    """Mean validation loss under each noise level, after BN recalibration. Cumulative noise (default):
    level i adds N(0, (s_i - s_{i-1})^2) on top of level i-1; direct: N(0, s_i^2) on the clean weights.
    Only the path's parameters can change the loss, so only they are perturbed; all are restored."""
    model = ctx.model
    params = model.path_parameters(candidate)
    gen = torch.Generator(device=ctx.device).manual_seed(derive_seed(ctx.seed, 'noise', list(candidate)))
    losses = []
    with model.preserved_path(candidate), precision(ctx):
        model.recalibrate_bn(candidate, bn_batches(ctx, ctx.max_train_img_size, candidate),
                             momentum=ctx.bn_momentum)
        clean = [p.detach().clone() for p in params] if ctx.perturb == 'direct' else None
        prev = 0.0
        for s in ctx.stds:
            sigma = s - prev if ctx.perturb == 'cumulative' else s
            for i, p in enumerate(params):
                if clean is not None:
                    p.copy_(clean[i])
                p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype), alpha=sigma)
            loss, _ = evaluate_candidate(model, candidate, valid_loader(ctx, ctx.max_val_img_size))
            losses.append(loss)
            prev = s
    if not all(math.isfinite(v) for v in losses):
        raise UserError(f'the loss of candidate {",".join(map(str, candidate))} under weight noise is {losses}: '
                        'the supernet checkpoint has diverged (retrain it with a lower --learning_rate) or --stds '
                        'is too large')
    return losses


def cached(ctx, key, compute):
    """compute(), remembered in ctx.cache (when the caller gave one) under (key, seed): the proxy study
    scores every metric of a candidate, and the combined metrics share their parts."""
    if ctx.cache is None:
        return compute()
    key = (key, ctx.seed)
    if key not in ctx.cache:
        ctx.cache[key] = compute()
    return ctx.cache[key]


def _wlm_components(ctx, candidate):
    def compute():
        losses = perturbed_losses(ctx, candidate)
        wlm, poor = wlm_from_losses(losses, ctx.stds)
        return {'wlm': wlm, 'poor': poor, 'losses': losses}
    return cached(ctx, ('wlm', tuple(candidate)), compute)


def _wlm_l0_components(ctx, candidate):
    """L0 is the clean loss after the same BN recalibration on the same validation images (what `acc`
    measures); the noise levels' losses are those of `wlm`."""
    clean = _acc_components(ctx, candidate)['loss']
    losses = _wlm_components(ctx, candidate)['losses']
    wlm, poor = wlm_l0_from_losses([clean] + losses, ctx.stds)
    return {'wlm_l0': wlm, 'poor_l0': poor, 'loss': clean, 'losses': losses}


def _angle_components(ctx, candidate):
    if ctx.init_model is None:
        raise UserError('the angle metrics need the initial supernet: pass --init_model_path '
                        'checkpoint_epoch_0.pth.tar')
    a = cached(ctx, ('angle', tuple(candidate)), lambda: angle(ctx.init_model, ctx.model, candidate, ctx.space))
    return {'angle': a, 'angle_normalized': a / math.pi}


def _acc_components(ctx, candidate, train_images=None, val_images=None):
    train_images, val_images = train_images or ctx.max_train_img_size, val_images or ctx.max_val_img_size
    ev = cached(ctx, ('acc', tuple(candidate), train_images, val_images),
                lambda: recalibrated_accuracy(ctx, candidate, train_images, val_images))
    if not math.isfinite(ev.loss):
        raise UserError(f'validation loss of candidate {",".join(map(str, candidate))} is {ev.loss}: the supernet '
                        'checkpoint has diverged; retrain it with a lower --learning_rate')
    return {'acc': ev.acc, 'loss': ev.loss}


@scored
def score_angle(ctx, candidate):
    c = _angle_components(ctx, candidate)
    return {'score': c['angle'], **c}


@scored
def score_acc(ctx, candidate):
    c = _acc_components(ctx, candidate)
    return {'score': c['acc'], **c}


@scored
def score_wlm(ctx, candidate):
    c = _wlm_components(ctx, candidate)
    return {'score': c['wlm'], **c}


@scored
def score_wlm_l0(ctx, candidate):
    c = _wlm_l0_components(ctx, candidate)
    return {'score': c['wlm_l0'], **c}


@scored
def score_angle_wlm(ctx, candidate):
    c = {**_angle_components(ctx, candidate), **_wlm_components(ctx, candidate)}
    return {'score': c['angle_normalized'] + ctx.wlm_weight / ctx.stds[0] * c['wlm'], **c}


@scored
def score_acc_wlm(ctx, candidate):
    c = {**_acc_components(ctx, candidate, ctx.acc_train_img_size, ctx.acc_val_img_size),
         **_wlm_components(ctx, candidate)}
    return {'score': c['acc'] + ctx.wlm_weight / ctx.stds[0] * c['wlm'], **c}


@scored
def score_angle_acc(ctx, candidate):
    c = {**_angle_components(ctx, candidate), **_acc_components(ctx, candidate)}
    return {'score': c['angle_normalized'] + ctx.acc_weight * c['acc'], **c}


# --- baselines on the stand-alone network at initialisation -------------------------------------------

def standalone_network(ctx, candidate):
    """The candidate's stand-alone network in the supernet's space (DARTS: NetworkCIFAR without auxiliary head
    or drop-path) on the device, its initial weights seeded by (seed, candidate); the global RNG is left as it
    was."""
    C = ctx.standalone_channels or ctx.model.init_channels
    layers = ctx.standalone_layers or ctx.model.num_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, 'init', list(candidate)))
        net = ctx.space.standalone(candidate, C, ctx.model.num_classes, layers)
    return net.to(ctx.device)


def zero_cost_batch(ctx):
    """The first BN-recalibration batch (batch_size augmented training images): the data of naswot,
    grad_norm and snip, the same for every candidate."""
    return next(bn_batches(ctx, ctx.batch_size))


def _image_shape(ctx):
    return tuple(zero_cost_batch(ctx)[0].shape[1:])


@scored
def score_params(ctx, candidate):
    n = count_parameters(standalone_network(ctx, candidate))
    return {'score': float(n), 'params': n}


@scored
def score_macs(ctx, candidate):
    n = count_macs(standalone_network(ctx, candidate), torch.zeros(1, *_image_shape(ctx), device=ctx.device))
    return {'score': float(n), 'macs': n}


@scored
def score_synflow(ctx, candidate):
    s = zero_cost.synflow(standalone_network(ctx, candidate), _image_shape(ctx))
    return {'score': s, 'synflow': s}


@scored
def score_naswot(ctx, candidate):
    s = zero_cost.naswot(standalone_network(ctx, candidate), zero_cost_batch(ctx)[0])
    return {'score': s, 'naswot': s}


@scored
def score_grad_norm(ctx, candidate):
    s = zero_cost.grad_norm(standalone_network(ctx, candidate), *zero_cost_batch(ctx))
    return {'score': s, 'grad_norm': s}


@scored
def score_snip(ctx, candidate):
    s = zero_cost.snip(standalone_network(ctx, candidate), *zero_cost_batch(ctx))
    return {'score': s, 'snip': s}


METRICS = {
    'angle': score_angle,
    'acc': score_acc,
    'wlm': score_wlm,
    'angle+wlm': score_angle_wlm,
    'acc+wlm': score_acc_wlm,
    'angle+acc': score_angle_acc,
    'wlm_l0': score_wlm_l0,
    'params': score_params,
    'macs': score_macs,
    'synflow': score_synflow,
    'naswot': score_naswot,
    'grad_norm': score_grad_norm,
    'snip': score_snip,
}
# The combined metrics: (first term, weighted term, the weight's flag), as score_angle_wlm / score_acc_wlm /
# score_angle_acc compute them.
COMBINED = {'angle+wlm': ('angle / pi', 'wlm', 'wlm_weight'), 'acc+wlm': ('acc', 'wlm', 'wlm_weight'),
            'angle+acc': ('angle / pi', 'acc', 'acc_weight')}


def formula(metric, wlm_weight, acc_weight, stds):
    """The score a metric computes with these weights, as text: what a search records and logs."""
    if metric not in COMBINED:
        return metric
    first, term, flag = COMBINED[metric]
    weight = wlm_weight / stds[0] if flag == 'wlm_weight' else acc_weight
    if weight == 0:
        return first
    shown = f'{wlm_weight:g} / {stds[0]:g}' if flag == 'wlm_weight' else f'{acc_weight:g}'
    return f'{first} + {shown} * {term}'


def reduced_to_one_term(metric, wlm_weight, acc_weight):
    """The flag whose value 0 makes a combined metric score its first term alone (None otherwise)."""
    if metric in COMBINED:
        flag = COMBINED[metric][2]
        if (wlm_weight if flag == 'wlm_weight' else acc_weight) == 0:
            return flag
    return None


NEEDS_INIT = {'angle', 'angle+wlm', 'angle+acc'}
# Metrics whose score does not depend on the seed (the proxy study scores them once).
DETERMINISTIC = {'angle', 'params', 'macs'}
