"""The DARTS space behind the SearchSpace interface: the cell encoding of genotypes.py, the supernet of
spaces/darts_supernet.py, the stand-alone networks of spaces/darts_network.py, and the angle-vector layout.

    space = get_space('darts')
    net = space.network(genotypes.DARTS_V2, C=48, num_classes=1000, layers=14, imagenet=True)   # stage 3
"""

import random

import torch

import genotypes
from genotypes import EDGES_PER_CELL, NODE_SLICES, PRIMITIVES
from operations import FactorizedReduce
from spaces.base import SearchSpace, conv_bn_weights
from spaces.darts_network import NetworkCIFAR, NetworkImageNet
from spaces.darts_supernet import Network


# --- angle ---------------------------------------------------------------------------------------

def cell_paths():
    """Every directed path from an input node (0, 1) to an intermediate node (2..5) of a cell, as
    lists of edge indices from the input onwards; 30 paths, ordered by end node, then by the
    predecessor on the last edge, then recursively."""
    ending = {}
    for node, (start, _) in enumerate(NODE_SLICES):
        target = node + 2
        paths = []
        for pred in range(target):
            edge = start + pred
            paths += [[edge]] if pred < 2 else [p + [edge] for p in ending[pred]]
        ending[target] = paths
    return [p for t in sorted(ending) for p in ending[t]]


def op_weights(mixed_op, code):
    """The tensors one op contributes to the angle vector, in the reference's order."""
    op = mixed_op.ops[code]
    name = PRIMITIVES[code]
    if 'pool' in name:                       # PoolBN: constant 1/9 kernel + BN affine
        bn = op.bn
        return [torch.full((bn.num_features, 3, 3), 1 / 9, device=bn.weight.device), bn.weight, bn.bias]
    if name == 'skip_connect' and not isinstance(op, FactorizedReduce):
        device = next(mixed_op.parameters()).device
        return [torch.eye(mixed_op.channels, device=device).flatten()]
    if name == 'skip_connect' or name.startswith(('sep_conv', 'dil_conv')):
        # the convs (4 sep, 2 dil, 2 factorized reduce), then each BN's weight and bias (for a dil_conv
        # the reference takes the BN weight twice)
        return conv_bn_weights(op)
    raise ValueError(f'no angle weights for {name}')


def angle_vector(model, candidate):
    """One float64 vector: for every cell, every path without a `none` edge contributes the weights of
    its ops in path order; then the stem conv + BN weight/bias, each cell's preprocessing (conv + BN
    weight/bias, or factorized reduce), and the classifier weight."""
    parts = []
    paths = cell_paths()
    for cell in model.cells:
        codes = candidate[EDGES_PER_CELL:] if cell.reduction else candidate[:EDGES_PER_CELL]
        for path in paths:
            if any(codes[e] == 0 for e in path):
                continue
            for e in path:
                parts += op_weights(cell.edges[e], codes[e])
    parts += [model.stem[0].weight, model.stem[1].weight, model.stem[1].bias]
    for cell in model.cells:
        parts += conv_bn_weights(cell.preprocess0) + conv_bn_weights(cell.preprocess1)
    parts.append(model.classifier.weight)
    return torch.cat([p.detach().reshape(-1).double() for p in parts])


# --- the space -----------------------------------------------------------------------------------

# --- uniform sampling (the proxy study) ---------------------------------------------------------------

def uniform_candidate(rng):
    """A candidate drawn uniformly from the valid 28-int candidates: for every node of both cells, two of
    its incoming edges uniformly (all pairs equally likely), each with an op uniform over the 7 that are
    not `none`. (The SPOS sampler `genotypes.random_candidate` repairs uniform codes instead, which
    favours some edge pairs.)"""
    codes = []
    for _ in range(2):
        for start, end in NODE_SLICES:
            kept = set(rng.sample(range(start, end), 2))
            codes += [rng.randint(1, len(PRIMITIVES) - 1) if e in kept else 0 for e in range(start, end)]
    return genotypes.check_valid(codes)


def uniform_sample(n, seed):
    """n distinct uniform candidates from random.Random(seed); a larger n extends the same list."""
    rng, seen, cells = random.Random(seed), set(), []
    while len(cells) < n:
        cand = uniform_candidate(rng)
        if tuple(cand) not in seen:
            seen.add(tuple(cand))
            cells.append(cand)
    return cells


class DartsSpace(SearchSpace):
    """28 ints (normal 14, reduce 14), repaired so every node keeps two inputs, as the reference's check_cand."""
    name = 'darts'
    candidate_len = genotypes.CANDIDATE_LEN
    default_layers = 8
    layers_meaning = 'cells of the supernet'

    def random_candidate(self, rng):
        return genotypes.random_candidate(rng)

    def uniform_sample(self, n, seed):
        return uniform_sample(n, seed)

    def mutate(self, candidate, rng, m_prob):
        cand = list(candidate)
        for i in range(len(cand)):          # all 28 edges (the reference only mutates the first 14)
            if rng.random() < m_prob:
                cand[i] = rng.randint(0, len(PRIMITIVES) - 1)
        return genotypes.repair(cand, rng)

    def crossover(self, a, b, rng):
        return genotypes.repair([rng.choice([x, y]) for x, y in zip(a, b)], rng)

    def check(self, candidate):
        return genotypes.check_valid(candidate)

    def parse(self, text):
        return genotypes.parse_candidate(text)

    def resolve_arch(self, arch):
        cand = genotypes.try_encode(genotypes.resolve_genotype(arch))
        if cand is None:
            raise genotypes.GenotypeError(f'--arch {arch} is not in the 28-int DARTS search space '
                                          '(5-node or non-DARTS ops)')
        return cand

    def decode(self, candidate):
        return genotypes.decode(candidate)

    def encode(self, readable):
        return genotypes.encode(readable)

    def to_string(self, candidate):
        return ','.join(str(int(c)) for c in candidate)

    def describe(self, candidate):
        return {'genotype': genotypes.genotype_to_dict(genotypes.decode(candidate))}

    def save_result(self, path, candidate, name, **extra):
        return genotypes.save_genotype(path, genotypes.decode(candidate), name=name, **extra)

    def check_shape(self, init_channels, layers):
        return super().check_shape(init_channels, layers) + [(layers >= 3, '--layers must be >= 3')]

    def build_supernet(self, C, num_classes, layers):
        return Network(C, num_classes, layers)

    def forward_args(self, candidate):
        return candidate[:EDGES_PER_CELL], candidate[EDGES_PER_CELL:]

    def angle_vector(self, model, candidate):
        return angle_vector(model, candidate)

    def standalone(self, candidate, C, num_classes, layers, auxiliary=False):
        return self.network(genotypes.decode(candidate), C, num_classes, layers, auxiliary)

    def network(self, genotype, C, num_classes, layers, auxiliary=False, imagenet=False):
        """Stage 3's network of a Genotype (any published cell, also 5-node ones outside the 28-int space):
        NetworkImageNet (224x224 input) with `imagenet`, else NetworkCIFAR (32x32 and smaller)."""
        cls = NetworkImageNet if imagenet else NetworkCIFAR
        return cls(C, num_classes, layers, auxiliary, genotype)

    # Stage 3's defaults (retrain/retrain.py): ImageNet C=48, 14 cells (224x224); CIFAR C=36, 20 cells.
    budget_shapes = {'imagenet': (48, 14), 'cifar': (36, 20)}

    def cheapest_candidate(self):
        """Every node takes max pooling of the cell's two inputs: pooling has no weights and no counted
        multiply-adds, and the rest of a network (stem, preprocessing, classifier) does not depend on the cell."""
        half = [1 if edge - start < 2 else 0 for start, end in NODE_SLICES for edge in range(start, end)]
        return half + half

    def budget_network(self, kind, candidate, C, num_classes, layers):
        return self.network(genotypes.decode(candidate), C, num_classes, layers, imagenet=kind == 'imagenet')
