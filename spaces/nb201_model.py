"""NAS-Bench-201 networks: the SPOS supernet, the stand-alone network of one cell, the angle vector.

    net = NB201Supernet(C=16, num_classes=10, layers=5)     # layers = N cells per stage
    logits = net(images, candidate)                         # 6 op codes (spaces/nb201.py)
    fixed = NB201Network(candidate, C=16, num_classes=10, layers=5)

Macro structure (the benchmark's): 3x3 conv stem (C channels) + BN; N cells at C; a residual basic
block of stride 2 to 2C; N cells at 2C; a residual block to 4C; N cells at 4C; BN, ReLU, global average
pooling, linear classifier. Inside a cell every op keeps the channels and the resolution: `none` (zeros),
`skip_connect` (identity), `nor_conv_1x1` / `nor_conv_3x3` (ReLU, conv, BN), `avg_pool_3x3` (stride 1,
padding 1, padded pixels not counted). Node j is the sum of its incoming edges; node 3 is the output.
The residual block: ReLU-conv3x3(stride 2)-BN, ReLU-conv3x3-BN, plus a shortcut of 2x2 average pooling
and a 1x1 conv. BNs are affine with running statistics, in the supernet too, so a path of the supernet
and the stand-alone network that carries its weights compute the same function.
"""
import torch
import torch.nn as nn

from operations import Identity, ReLUConvBN, Zero
from spaces.base import conv_bn_weights
from spaces.nb201 import EDGES, NODES, OPS, check_candidate
from spaces.supernet import SinglePathModel

# name -> constructor(C): one signature, as operations.OPS.
NB201_OPS = {
    'none': lambda C: Zero(1),
    'skip_connect': lambda C: Identity(),
    'nor_conv_1x1': lambda C: ReLUConvBN(C, C, 1, 1, 0),
    'nor_conv_3x3': lambda C: ReLUConvBN(C, C, 3, 1, 1),
    'avg_pool_3x3': lambda C: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
}


class ResidualReduction(nn.Module):
    """The benchmark's stride-2 ResNet basic block between stages (C_in -> C_out channels, H/2 x W/2)."""

    def __init__(self, C_in, C_out):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2, padding=0),
                                        nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def run_cell(x, edge_op):
    """Node 3 of a cell with input x (N, C, H, W): node j = sum over edges (j <- i) of edge_op(e)(node i).
    edge_op(e) returns the edge's module, or None for `none` (exact zeros, skipped: adding 0.0 never
    changes a float). A node without inputs is zeros, which the next ops still see (a conv + BN of
    zeros gives the BN bias in training mode, as in the benchmark)."""
    nodes = [x]
    for node in range(1, NODES):
        total = None
        for e, (dst, src) in enumerate(EDGES):
            op = edge_op(e) if dst == node else None
            if op is not None:
                out = op(nodes[src])
                total = out if total is None else total + out
        nodes.append(x.mul(0.) if total is None else total)
    return nodes[-1]


class MixedEdge(nn.Module):
    """All 5 ops of one edge; `ops[code]`."""

    def __init__(self, C):
        super().__init__()
        self.channels = C
        self.ops = nn.ModuleList(NB201_OPS[name](C) for name in OPS)


class SuperCell(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.channels = C
        self.edges = nn.ModuleList(MixedEdge(C) for _ in EDGES)

    def forward(self, x, codes):
        return run_cell(x, lambda e: self.edges[e].ops[int(codes[e])] if int(codes[e]) else None)

    def path_modules(self, codes):
        return [self.edges[e].ops[int(c)] for e, c in enumerate(codes) if int(c)]


class FixedCell(nn.Module):
    """One cell of a stand-alone network: `edges[e]` is the op of edge e (Zero for `none`)."""

    def __init__(self, C, codes):
        super().__init__()
        self.codes = [int(c) for c in codes]
        self.edges = nn.ModuleList(NB201_OPS[OPS[c]](C) for c in self.codes)

    def forward(self, x):
        return run_cell(x, lambda e: self.edges[e] if self.codes[e] else None)


def stage_plan(C, layers):
    """[(kind, C_in, C_out)] of the 3N + 2 blocks: 'cell' or 'reduction'."""
    plan, c_prev = [], C
    for stage, c in enumerate((C, 2 * C, 4 * C)):
        if stage:
            plan.append(('reduction', c_prev, c))
        plan += [('cell', c, c)] * layers
        c_prev = c
    return plan


class _Macro(nn.Module):
    """Stem, blocks, BN + ReLU, pooling, classifier; `make_cell(C)` builds each cell."""

    def __init__(self, C, num_classes, layers, make_cell):
        super().__init__()
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList(make_cell(c_out) if kind == 'cell' else ResidualReduction(c_in, c_out)
                                   for kind, c_in, c_out in stage_plan(C, layers))
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * C, num_classes)

    def head(self, x):
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


class NB201Supernet(_Macro, SinglePathModel):
    """SPOS supernet of the NB201 space; forward(x, candidate) runs the path of 6 op codes."""

    def __init__(self, C=16, num_classes=10, layers=5):
        super().__init__(C, num_classes, layers, SuperCell)

    def forward(self, x, candidate):
        # x: (N, 3, H, W) -> logits (N, num_classes); every cell runs the same 6 codes.
        out = self.stem(x)
        for block in self.cells:
            out = block(out, candidate) if isinstance(block, SuperCell) else block(out)
        return self.head(out)

    def forward_candidate(self, x, candidate):
        return self(x, candidate)

    def path_modules(self, candidate):
        """Stem, the chosen ops of every cell, the residual blocks, last BN, classifier (in forward order,
        which is also the parameter order of the stand-alone network)."""
        mods = [self.stem]
        for block in self.cells:
            mods += block.path_modules(candidate) if isinstance(block, SuperCell) else [block]
        return mods + [self.lastact, self.classifier]


class NB201Network(_Macro):
    """The stand-alone network of one cell, as the benchmark trains it; forward(x) -> logits."""

    def __init__(self, candidate, C=16, num_classes=10, layers=5):
        codes = check_candidate(candidate)
        super().__init__(C, num_classes, layers, lambda c: FixedCell(c, codes))
        self.candidate = codes

    def forward(self, x):
        out = self.stem(x)
        for block in self.cells:
            out = block(out)
        return self.head(out)


def standalone_from_supernet(supernet, candidate):
    """An NB201Network holding the supernet path's weights and BN statistics (copies)."""
    net = NB201Network(candidate, supernet.init_channels, supernet.num_classes, supernet.num_layers)
    own = net.state_dict()
    src = supernet.state_dict()
    for key in own:
        parts = key.split('.')
        if parts[0] == 'cells' and isinstance(net.cells[int(parts[1])], FixedCell):
            # cells.i.edges.e.<rest>  <-  cells.i.edges.e.ops.<code>.<rest>
            e = int(parts[3])
            parts = parts[:4] + ['ops', str(net.cells[int(parts[1])].codes[e])] + parts[4:]
        own[key] = src['.'.join(parts)].clone()
    net.load_state_dict(own)
    return net


# --- angle ---------------------------------------------------------------------------------------

def cell_paths():
    """Every path from node 0 to node 3 as edge indices from the input on: [[3], [0, 4], [1, 5], [0, 2, 5]]
    (ordered by the predecessor on the last edge, then recursively)."""
    ending = {0: [[]]}
    for node in range(1, NODES):
        ending[node] = [p + [e] for e, (dst, src) in enumerate(EDGES) if dst == node for p in ending[src]]
    return ending[NODES - 1]


def op_weights(edge, code):
    """What one op contributes to the angle vector: a conv its conv weight and BN weight and bias, average
    pooling a constant 1/9 kernel of shape (C, 3, 3), skip the flattened C x C identity."""
    name, op = OPS[code], edge.ops[code]
    device = next(edge.parameters()).device
    if name == 'avg_pool_3x3':
        return [torch.full((edge.channels, 3, 3), 1 / 9, device=device)]
    if name == 'skip_connect':
        return [torch.eye(edge.channels, device=device).flatten()]
    if name.startswith('nor_conv'):
        return conv_bn_weights(op)
    raise ValueError(f'no angle weights for {name}')


def angle_vector(model, candidate):
    """One float64 vector: for every cell, every node-0-to-node-3 path without a `none` edge adds its ops'
    weights in path order; then the stem conv + BN weight/bias, each residual block (conv_a and conv_b
    with their BNs, the shortcut conv), the last BN's weight/bias and the classifier weight."""
    codes = check_candidate(candidate)
    parts, paths = [], cell_paths()
    for block in model.cells:
        if isinstance(block, SuperCell):
            for path in paths:
                if all(codes[e] for e in path):
                    for e in path:
                        parts += op_weights(block.edges[e], codes[e])
    parts += [model.stem[0].weight, model.stem[1].weight, model.stem[1].bias]
    for block in model.cells:
        if isinstance(block, ResidualReduction):
            parts += conv_bn_weights(block.conv_a) + conv_bn_weights(block.conv_b) + [block.downsample[1].weight]
    parts += [model.lastact[0].weight, model.lastact[0].bias, model.classifier.weight]
    return torch.cat([p.detach().reshape(-1).double() for p in parts])
