"""Data-free scores of a NAS-Bench-201 cell's stand-alone network, for every dataset from one network build.

    scores = datafree_scores(candidate, seed=0)     # {'cifar10': {'params': .., 'macs': .., 'synflow': ..}, ...}

The network is the one spaces gives (`NB201Network`, the benchmark's C = 16, N = 5), with the classifier
of each dataset (10, 100, 120 classes) and its image size (32, 32, 16), its initial weights seeded by
(seed, candidate) as the study's stand-alone networks are (evolutionary_search/metrics.py). Equal to
building that network once per dataset and calling count_parameters, count_macs and zero_cost.synflow
(tests/test_nb201_datafree.py checks it), but cheaper:
- the classifier is the last module a network draws weights for, so one build gives every dataset's body
  weights; each dataset's classifier is drawn again from the generator state the build had just before it;
- synflow with an all-ones input is sum over parameters of |theta| * dR/d|theta|, R the sum of the
  logits. R is linear in the classifier, so with f the pooled features and g = sum over body parameters
  of theta * df/dtheta (the derivative along theta itself, carried through one forward pass as a second
  image), synflow = (column sums of W) . g + sum(W f) + sum(b) for every classifier (W, b): one pass per
  image size;
- multiply-adds are counted in that pass from the convolutions' and the classifier's shapes, as
  torch.utils.flop_counter counts them (convolutions and matrix products; no pooling, no BN, no bias).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from spaces.nb201_model import NB201Network
from seeding import derive_seed

CHANNELS, LAYERS = 16, 5
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'imagenet16-120': 120}
IMAGE_SIZE = {'cifar10': 32, 'cifar100': 32, 'imagenet16-120': 16}
METRICS = ('params', 'macs', 'synflow')


def init_seed(seed, candidate):
    """The seed of a stand-alone network's initial weights, as evolutionary_search/metrics.py derives it."""
    return derive_seed(seed, 'init', list(candidate))


@dataclass
class Built:
    net: NB201Network           # with the classifier of the first class count
    classifiers: dict           # class count -> nn.Linear, each as a build with that class count draws it


def build(candidate, seed, class_counts, C=CHANNELS, layers=LAYERS):
    """One seeded build of the network; the classifier of every class count from the generator state the build
    had when the classifier's weight was registered (after the body's weights were drawn, before its own)."""
    state = []

    def before_classifier(module, name, param):
        if isinstance(module, nn.Linear) and name == 'weight' and not state:
            state.append(torch.get_rng_state())
    counts = list(dict.fromkeys(class_counts))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, candidate))
        handle = nn.modules.module.register_module_parameter_registration_hook(before_classifier)
        try:
            net = NB201Network(candidate, C, counts[0], layers)
        finally:
            handle.remove()
        classifiers = {counts[0]: net.classifier}
        for k in counts[1:]:
            torch.set_rng_state(state[0])
            classifiers[k] = nn.Linear(net.classifier.in_features, k)
    return Built(net, classifiers)


@dataclass
class Pass:
    features: torch.Tensor      # pooled features of the all-ones image (float64)
    tangent: torch.Tensor       # g: their derivative along theta
    body_macs: int              # multiply-adds of the convolutions for one image


def with_tangent(module, inputs):
    """Forward pre-hook of a module with parameters, on a batch [x, t] of a value and its tangent: such a
    module (convolution, BN) is m(x) = sum of terms with one parameter factor each, so the derivative of
    m_{(1+e) theta}(x + e t) at e = 0 is m(x + t). It gets [x, x + t] and returns [m(x), tangent]."""
    x, t = inputs[0].chunk(2)
    return torch.cat([x, x + t])


def synflow_pass(net, size):
    """Pass of the body (the network without its classifier, weights |theta|, eval mode, float64) on one
    all-ones image of size x size, carried with its tangent as a batch of two. The modules without parameters
    are linear here (pooling, sums, zeros, and ReLUs, which see only values >= 0 once every weight is |theta|
    and the input is positive): they map the tangent as they map the value."""
    macs = []

    def count(module, inputs, output):
        macs.append(output[0].numel() * module.in_channels // module.groups * module.weight[0, 0].numel())
    owners = [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_pre_hook(with_tangent) for m in owners]
    handles += [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    x = torch.cat([torch.ones(1, 3, size, size, dtype=torch.float64), torch.zeros(1, 3, size, size,
                                                                                  dtype=torch.float64)])
    try:
        with torch.no_grad():
            features, tangent = net(x)
    finally:
        for h in handles:
            h.remove()
    return Pass(features, tangent, sum(macs))


def classifier_synflow(classifier, p):
    """synflow of the whole network from the body's Pass and a classifier (float64, |W|, |b|)."""
    w = classifier.weight.detach().double().abs()
    b = classifier.bias.detach().double().abs()
    return float(w.sum(0) @ p.tangent + (w @ p.features).sum() + b.sum())


def datafree_scores(candidate, seed=0, datasets=tuple(NUM_CLASSES), C=CHANNELS, layers=LAYERS):
    """{dataset: {'params', 'macs', 'synflow'}} of the candidate's stand-alone network at initialisation."""
    built = build(candidate, seed, [NUM_CLASSES[d] for d in datasets], C, layers)
    body = built.net.double().eval()
    with torch.no_grad():
        for p in body.parameters():
            p.abs_()
    body.classifier = nn.Identity()
    body_params = sum(p.numel() for p in body.parameters())
    passes = {size: synflow_pass(body, size) for size in dict.fromkeys(IMAGE_SIZE[d] for d in datasets)}
    out = {}
    for d in datasets:
        lin, p = built.classifiers[NUM_CLASSES[d]], passes[IMAGE_SIZE[d]]
        out[d] = {'params': body_params + sum(q.numel() for q in lin.parameters()),
                  'macs': p.body_macs + lin.in_features * lin.out_features,
                  'synflow': classifier_synflow(lin, p)}
    return out
