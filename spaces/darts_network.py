"""Stage 3's fixed-genotype networks of the DARTS space (the networks the reference retrains).

    NetworkCIFAR(C, num_classes, layers, auxiliary, genotype)      # 32x32 input
    NetworkImageNet(C, num_classes, layers, auxiliary, genotype)   # 224x224 input (mobile setting)

Both have a `drop_path_prob` attribute (set it every epoch) and return (logits, logits_aux), where
logits_aux is None unless training with the auxiliary head. Module names are the reference's,
so its checkpoints load with strict=True (after dropping the `module.` prefix of its DDP-saved files).
"""
import contextlib

import torch
import torch.nn as nn

from operations import OPS, FactorizedReduce, Identity, ReLUConvBN, cat_channels


def drop_path(x, drop_prob):
    """Zero whole samples with probability drop_prob and scale the rest by 1 / keep (x: (N, C, H, W)): the
    reference's x / keep * mask, bit for bit wherever x / keep is finite (past that a dropped sample's x / keep *
    0 is NaN, which the CPU's one-pass form below gives as a zero)."""
    keep = 1.0 - drop_prob
    if torch.compiler.is_compiling():
        # bernoulli_(float) would bake drop_prob into the graph, which then recompiles every epoch (the
        # probability grows each epoch); a comparison keeps it an input. The same distribution, another stream.
        mask = (torch.rand(x.size(0), 1, 1, 1, device=x.device) < keep).to(x.dtype)
        return x.div(keep) * mask
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    if x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64):
        # One pass instead of two, in both directions: a kept sample divided by keep is x / keep, a dropped one
        # divided by infinity is a zero of x's sign, as x / keep * 0 is (and NaN where x is infinite or NaN, as
        # there); the gradient g / divisor likewise equals (g * mask) / keep. Not on a GPU, whose division by a
        # scalar multiplies by its reciprocal, nor in reduced precision, where a CPU's does not match a division
        # by a tensor either.
        return x.div(torch.full_like(mask, float('inf')).masked_fill_(mask.bool(), keep))
    return x.div(keep) * mask


class Cell(nn.Module):
    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        if reduction:
            ops, concat = genotype.reduce, genotype.reduce_concat
        else:
            ops, concat = genotype.normal, genotype.normal_concat
        self.reduction = reduction
        self._steps = len(ops) // 2
        self._concat = list(concat)
        self.multiplier = len(concat)
        self._indices = [index for _, index in ops]
        self._ops = nn.ModuleList(OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in ops)

    def forward(self, s0, s1, drop_prob):
        return self._nodes([self.preprocess0(s0), self.preprocess1(s1)], drop_prob)

    def forward_relu(self, r0, r1, drop_prob):
        """forward of the rectified inputs: both preprocessing ops start with a ReLU, so a network that feeds a
        tensor to two cells rectifies it once (the same values; the input gradients equal bit for bit, as masking
        commutes with their sum)."""
        return self._nodes([self.preprocess0.after_relu(r0), self.preprocess1.after_relu(r1)], drop_prob)

    def _nodes(self, states, drop_prob):
        """The cell's nodes from its two preprocessed inputs; the concatenated output."""
        for i in range(self._steps):
            node = 0
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return cat_channels([states[i] for i in self._concat])


class _AuxiliaryHead(nn.Module):
    """ReLU, 5x5 average pool (stride `pool_stride`) to 2x2, 1x1 conv 128 + BN + ReLU, 2x2 conv 768
    (+ BN if `bn_last`) + ReLU, linear. Module indices as in the reference."""

    def __init__(self, C, num_classes, pool_stride, bn_last):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if bn_last else []),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """On the 8x8 maps after cell 2*layers//3."""

    def __init__(self, C, num_classes):
        super().__init__(C, num_classes, pool_stride=3, bn_last=True)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """On the 7x7 maps after cell 2*layers//3; no BN after the 2x2 conv, as in DARTS."""

    def __init__(self, C, num_classes):
        super().__init__(C, num_classes, pool_stride=2, bn_last=False)


class _Network(nn.Module):
    """Cells, auxiliary head and classifier shared by both networks; subclasses build the stem."""

    def _build_cells(self, C, num_classes, layers, auxiliary, genotype, C_prev_prev, C_prev, reduction_prev, aux_cls):
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        self.cells = nn.ModuleList()
        C_curr = C
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = aux_cls(C_to_auxiliary, num_classes)
        return C_prev

    # Each cell output feeds the next two cells through their preprocessing ReLUs: with share_relu (the default)
    # it is rectified once and both read that; without, every cell rectifies its own inputs through its nn.ReLU
    # modules, as the reference's do. The same outputs and gradients bit for bit.
    share_relu = True

    def _cells_forward(self, s0, s1):
        logits_aux = None
        r0 = torch.relu(s0) if self.share_relu else None
        r1 = r0 if s1 is s0 or not self.share_relu else torch.relu(s1)
        for i, cell in enumerate(self.cells):
            if self.share_relu:
                s1 = cell.forward_relu(r0, r1, self.drop_path_prob)
                r0, r1 = r1, (torch.relu(s1) if i + 1 < len(self.cells) else None)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1)), logits_aux

    @contextlib.contextmanager
    def relu_per_cell(self):
        """Within: share_relu off, so that what watches nn.ReLU modules (naswot's hooks) sees the reference's
        ReLUs, each cell's preprocessing ones included."""
        before, self.share_relu = self.share_relu, False
        try:
            yield
        finally:
            self.share_relu = before


class NetworkCIFAR(_Network):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        stem_multiplier = 3
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev = self._build_cells(C, num_classes, layers, auxiliary, genotype, C_curr, C_curr, False,
                                   AuxiliaryHeadCIFAR)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s = self.stem(x)
        return self._cells_forward(s, s)


class NetworkImageNet(_Network):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_prev = self._build_cells(C, num_classes, layers, auxiliary, genotype, C, C, True, AuxiliaryHeadImageNet)
        self.global_pooling = nn.AvgPool2d(7)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._cells_forward(s0, s1)
