"""Zero-cost proxies: scores of a network at initialisation from at most one batch, no training.

    synflow(net, input_shape)   Tanaka et al. 2020, as a NAS proxy by Abdelfattah et al. 2021
    naswot(net, x)              Mellor et al. 2021: log-determinant of the ReLU activation-pattern kernel
    grad_norm(net, x, y)        sum over conv / linear weights of the norm of the loss gradient
    snip(net, x, y)             Lee et al. 2019: sum over conv / linear weights of |weight * gradient|

Each takes a freshly built network it may modify (synflow replaces its weights by their absolute
values), and returns a float; higher is better in the sense the papers rank with. The networks may
return a tensor or a (logits, auxiliary logits) tuple. Their gradients come from PyTorch's own kernels
(operations' 'direct' gradient form) whatever form training uses, so a score never depends on it.
"""
import contextlib

import torch
import torch.nn as nn

from operations import using_grad_form


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


def _weights(net):
    """Weights of the conv and linear layers: what SNIP and grad_norm measure (as in the NAS papers)."""
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def synflow(net, input_shape):
    """sum over all parameters of theta * dR/dtheta, with every parameter replaced by |theta|, float64,
    R = sum of the logits for one all-ones input of `input_shape` (C, H, W), BN in eval mode (with
    fresh running statistics BN is then an affine map, so a single input is well defined). No data."""
    net = net.double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    device = next(net.parameters()).device
    ones = torch.ones(1, *input_shape, dtype=torch.float64, device=device)
    with using_grad_form('direct'):
        _logits(net(ones)).sum().backward()
    with torch.no_grad():
        return float(sum((p * p.grad).sum() for p in net.parameters() if p.grad is not None))


def naswot_kernel(codes):
    """K[i, j] = number of units where images i and j have the same binary code (N_A - Hamming
    distance), for codes (N images, units) of 0/1 values."""
    c = codes.double()
    return c @ c.T + (1 - c) @ (1 - c).T


def naswot_logdet(kernel):
    """log |det K| (Mellor et al.'s score); -inf when K is singular (two images with equal codes)."""
    return float(torch.linalg.slogdet(kernel.double())[1])


@torch.no_grad()
def naswot(net, x):
    """NASWOT score of a batch x: the kernel of every nn.ReLU's binary pattern (input > 0), summed over
    the ReLUs as they fire (memory: one (N, N) matrix), then its log-determinant. Train-mode BN."""
    n = x.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64, device=x.device)

    def hook(module, inputs, output):
        nonlocal kernel
        kernel = kernel + naswot_kernel((inputs[0] > 0).reshape(n, -1))

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.ReLU)]
    # A stand-alone network rectifies each cell output once by default; its per-cell ReLU modules count here.
    per_cell = getattr(net, 'relu_per_cell', None)
    try:
        net.train()
        with per_cell() if per_cell is not None else contextlib.nullcontext():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return naswot_logdet(kernel)


def _loss_gradients(net, x, y):
    """Backward of the cross-entropy of one batch in train mode; returns the conv / linear weights."""
    net.train()
    net.zero_grad(set_to_none=True)
    with using_grad_form('direct'):
        nn.functional.cross_entropy(_logits(net(x)), y).backward()
    return [w for w in _weights(net) if w.grad is not None]


def grad_norm(net, x, y):
    weights = _loss_gradients(net, x, y)
    with torch.no_grad():
        return float(sum(w.grad.norm() for w in weights))


def snip(net, x, y):
    weights = _loss_gradients(net, x, y)
    with torch.no_grad():
        return float(sum((w * w.grad).abs().sum() for w in weights))
