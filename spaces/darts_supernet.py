"""The DARTS-space SPOS supernet: every edge holds all 8 primitives, a forward pass runs one path.

    net = Network(C=16, num_classes=10, layers=8)
    logits = net(images, normal_codes, reduce_codes)      # two 14-int halves of a candidate

Module names (and so state_dict keys) are the reference's, so its supernet checkpoints load with
strict=True: `stem.{0,1}`, `cells.{i}.preprocess{0,1}`,
`cells.{i}._ops.{edge}._ops.{code}...`, `classifier`.
"""
import torch
import torch.nn as nn

from genotypes import EDGES_PER_CELL, PRIMITIVES, STEPS
from operations import OPS, FactorizedReduce, ReLUConvBN, cat_channels
from spaces.supernet import SinglePathModel


class PoolBN(nn.Sequential):
    """A pooling op followed by its own BN (the supernet's pools); keys `0` (pool), `1` (BN)."""

    @property
    def bn(self):
        return self[1]


class MixedOp(nn.Module):
    """All primitives of one edge; `ops[code]` is the op for that code. Pools get their own BN."""

    def __init__(self, C, stride):
        super().__init__()
        self.channels = C
        self._ops = nn.ModuleList()          # the reference's name (checkpoint keys); read it as `ops`
        for name in PRIMITIVES:
            op = OPS[name](C, stride, True)
            if 'pool' in name:
                op = PoolBN(op, nn.BatchNorm2d(C, affine=True))
            self._ops.append(op)

    @property
    def ops(self):
        return self._ops

    def forward(self, x, code):
        return self._ops[code](x)


class SuperCell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self._steps = steps
        self._multiplier = multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self._ops = nn.ModuleList()          # one MixedOp per edge; the reference's name, read it as `edges`
        for i in range(steps):
            for j in range(2 + i):
                self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1))

    @property
    def edges(self):
        return self._ops

    def forward(self, s0, s1, codes):
        return self.forward_relu(torch.relu(s0), torch.relu(s1), codes)

    def forward_relu(self, r0, r1, codes):
        """Cell output from relu(s0), relu(s1): both preprocessing ops start with a ReLU. Every state
        is rectified once, however many ops read it; ops that start with a ReLU run `after_relu`
        (same values, less memory and time than one ReLU per op)."""
        states = [self.preprocess0.after_relu(r0), self.preprocess1.after_relu(r1)]
        rectified = {}
        offset = 0
        for _ in range(self._steps):
            # `none` edges contribute exact zeros, so they are skipped rather than computed; adding
            # 0.0 never changes a float, so the sum equals the reference's sum over all edges.
            node = None
            for j, h in enumerate(states):
                code = int(codes[offset + j])
                if code == 0:
                    continue
                op = self._ops[offset + j]._ops[code]
                if hasattr(op, 'after_relu'):
                    if j not in rectified:
                        rectified[j] = torch.relu(h)
                    out = op.after_relu(rectified[j])
                else:
                    out = op(h)
                node = out if node is None else node + out
            if node is None:   # a node with only `none` inputs (never in a valid candidate)
                node = self._ops[offset](states[0], 0)
            offset += len(states)
            states.append(node)
        return cat_channels(states[-self._multiplier:])

    def forward_reference(self, s0, s1, codes):
        """The literal formulation (every op applies its own ReLU, `none` edges add computed zeros):
        the same values as `forward`, slower; kept to test and to measure the fast path against."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            states.append(sum(self._ops[offset + j](h, int(codes[offset + j])) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[-self._multiplier:], dim=1)

    def path_modules(self, codes):
        """Modules this cell runs for `codes` (14 ints): preprocessing, then each chosen op."""
        mods = [self.preprocess0, self.preprocess1]
        mods += [self._ops[e]._ops[int(c)] for e, c in enumerate(codes) if int(c) != 0]
        return mods


class Network(SinglePathModel):
    """SPOS supernet; reduction cells at layers//3 and 2*layers//3 double the channels."""

    def __init__(self, C=16, num_classes=10, layers=8, steps=STEPS, multiplier=4, stem_multiplier=3):
        super().__init__()
        self._C = C
        self._num_classes = num_classes
        self._layers = layers
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = SuperCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x, normal_codes, reduce_codes):
        # x: (N, 3, H, W) -> logits (N, num_classes). A cell's output feeds the next two cells only
        # through their preprocessing ReLUs, so it is rectified once here (the last one not at all).
        out = self.stem(x)
        r0 = r1 = torch.relu(out)
        for i, cell in enumerate(self.cells):
            out = cell.forward_relu(r0, r1, reduce_codes if cell.reduction else normal_codes)
            if i + 1 < len(self.cells):
                r0, r1 = r1, torch.relu(out)
        return self.classifier(self.global_pooling(out).flatten(1))

    def forward_reference(self, x, normal_codes, reduce_codes):
        """`forward` through SuperCell.forward_reference (no shared ReLUs, computed `none` edges)."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell.forward_reference(s0, s1, reduce_codes if cell.reduction else normal_codes)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def forward_candidate(self, x, candidate):
        """Forward with one 28-int candidate (normal 14, then reduce 14)."""
        return self(x, candidate[:EDGES_PER_CELL], candidate[EDGES_PER_CELL:])

    def path_modules(self, candidate):
        """Every module whose parameters or BN statistics can change the output of `candidate`:
        stem, each cell's preprocessing and chosen ops, classifier (each module once)."""
        normal, reduce = candidate[:EDGES_PER_CELL], candidate[EDGES_PER_CELL:]
        mods = [self.stem]
        for cell in self.cells:
            mods += cell.path_modules(reduce if cell.reduction else normal)
        mods.append(self.classifier)
        return mods
