"""The supernet contract of every search space: what scoring needs from a single-path supernet (its path's
parameters and BNs, a bit-exact snapshot, BN recalibration) and the evaluation of one path.

A space's supernet subclasses SinglePathModel and defines `path_modules(candidate)` and
`forward_candidate(x, candidate)`; stages and metrics use nothing else.
"""
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn as nn


class PathEval(NamedTuple):
    loss: float          # mean cross-entropy per image
    acc: float           # top-1 fraction


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


@torch.inference_mode()
def evaluate_candidate(model, candidate, loader):
    """PathEval(mean cross-entropy per image, top-1 fraction) of one candidate over a loader, in eval mode.
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
    return PathEval(loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1))
