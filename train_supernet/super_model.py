"""The SPOS supernet: every edge holds all 8 primitives, a forward pass runs one path.

    net = Network(C=16, num_classes=10, layers=8)
    logits = net(images, normal_codes, reduce_codes)      # two 14-int halves of a candidate

Module names (and so state_dict keys) follow the reference exactly (SPEC section 6), so reference
supernet checkpoints load with strict=True: `stem.{0,1}`, `cells.{i}.preprocess{0,1}`,
`cells.{i}._ops.{edge}._ops.{code}...`, `classifier`.
"""
from contextlib import contextmanager

import torch
import torch.nn as nn

from genotypes import EDGES_PER_CELL, PRIMITIVES, STEPS
from operations import OPS, FactorizedReduce, ReLUConvBN


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
        return torch.cat(states[-self._multiplier:], dim=1)

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


class SinglePathModel(nn.Module):
    """What scoring needs from a supernet of any search space, given `path_modules(candidate)` (every
    module whose parameters or BN statistics can change the output of that path, each once) and
    `forward_candidate(x, candidate)`: the path's parameters and BNs, a bit-exact snapshot, and BN
    recalibration. Holds no parameters, so subclasses keep their state_dict keys."""

    # Subclasses set _C, _layers and _num_classes in their __init__; other modules read these properties.
    @property
    def init_channels(self):
        return self._C

    @property
    def num_layers(self):
        return self._layers

    @property
    def num_classes(self):
        return self._num_classes

    def path_parameters(self, candidate):
        """Parameters on the path of `candidate` (the only ones that influence its loss)."""
        return [p for m in self.path_modules(candidate) for p in m.parameters()]

    def path_batchnorms(self, candidate):
        """BatchNorm layers on the path of `candidate`."""
        return [m for mod in self.path_modules(candidate) for m in mod.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @contextmanager
    def preserved_path(self, candidate):
        """Snapshot the path's parameters and BN buffers; restore them bit-exactly on exit, so scoring
        (BN recalibration, weight perturbation) leaves the supernet exactly as it was."""
        tensors = [p for p in self.path_parameters(candidate)]
        tensors += [b for bn in self.path_batchnorms(candidate) for b in bn.buffers()]
        saved = [t.detach().clone() for t in tensors]
        try:
            yield
        finally:
            with torch.no_grad():
                for t, s in zip(tensors, saved):
                    t.copy_(s)

    @torch.no_grad()
    def recalibrate_bn(self, candidate, batches, momentum=None):
        """Reset the running statistics of the path's BNs and re-estimate them by forwarding
        `batches` ((x, y) pairs) in train mode; ends in eval mode. momentum=None gives the exact
        cumulative average over the batches (SPOS); 0.1 is PyTorch's default (the reference)."""
        bns = self.path_batchnorms(candidate)
        old = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()        # also zeroes num_batches_tracked, which momentum=None needs
            bn.momentum = momentum
        self.train()
        try:
            for x, _ in batches:
                self.forward_candidate(x, candidate)
        finally:
            for bn, m in zip(bns, old):
                bn.momentum = m
            self.eval()


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

@torch.inference_mode()
def evaluate_candidate(model, candidate, loader):
    """(mean cross-entropy per image, top-1 fraction) of one candidate over a loader, in eval mode.
    Sums stay on the device (no synchronization per batch) and in float64."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    seen = 0
    for x, y in loader:
        logits = model.forward_candidate(x, candidate)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction='sum').double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)
