"""Candidate operations of the DARTS space: `OPS[name](C, stride, affine) -> nn.Module`.

Every op maps C channels to C channels; stride 2 halves the spatial size. Module names inside each
op (`op.{n}`, `conv_1`, `conv_2`, `bn`) are fixed by the reference checkpoints.
This module is a leaf: it imports nothing from the project.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

# How dilated depthwise convolutions (the dil_conv ops) run on a CPU: 'polyphase' (the default) or 'direct'.
# oneDNN's kernels for their backward pass are several times slower than for non-dilated ones; with dilation d,
# each polyphase component x[..., r::d, s::d] of the input only meets itself, so 'polyphase' computes the same sums
# with non-dilated kernels: a strided one (stride == dilation, as in reduction cells) runs as a plain convolution of
# one component; a stride-1 one keeps the direct forward and computes its input gradient as the dilated forward of
# the flipped kernel and its weight gradient from the d*d components stacked into the batch. Forward outputs are
# those of 'direct' bit for bit; gradients agree to float rounding (another order of the same sums). 'direct' is
# PyTorch's own dilated convolution: what a run made before this choice existed used, so such a run resumes bit
# for bit (see set_dilated_conv). Other devices always run 'direct'.
DILATED_FORMS = ('polyphase', 'direct')
_dilated_form = 'polyphase'


def set_dilated_conv(form):
    """Choose how dilated depthwise convolutions run on a CPU from now on (one of DILATED_FORMS)."""
    global _dilated_form
    if form not in DILATED_FORMS:
        raise ValueError(f'dilated convolution form {form!r}: choose from {", ".join(DILATED_FORMS)}')
    _dilated_form = form


def dilated_conv():
    """The form dilated depthwise convolutions run in now (see set_dilated_conv)."""
    return _dilated_form


@contextlib.contextmanager
def dilated_conv_form(form):
    """Within: dilated depthwise convolutions run in `form`; the previous form afterwards."""
    before = _dilated_form
    set_dilated_conv(form)
    try:
        yield
    finally:
        set_dilated_conv(before)


OPS = {
    'none': lambda C, stride, affine: Zero(stride),
    'avg_pool_3x3': lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    'max_pool_3x3': lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    'skip_connect': lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    'sep_conv_3x3': lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    'sep_conv_5x5': lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    'sep_conv_7x7': lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    'dil_conv_3x3': lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    'dil_conv_5x5': lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    'conv_7x1_1x7': lambda C, stride, affine: Conv7x1x1x7(C, stride, affine=affine),
}


class ConvBNLayers:
    """`convs` and `bns`: an op's convolutions and BatchNorms in forward order, found by type, so code that
    reads their weights (the angle metric's vector) does not depend on where they sit in `self.op`."""

    @property
    def convs(self):
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    @property
    def bns(self):
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]


class ReLUFirst(ConvBNLayers, nn.Module):
    """An op whose `self.op` is nn.Sequential(ReLU, ...). `after_relu(relu(x)) == forward(x)`, so a
    network can apply one ReLU to a tensor that several such ops read (see the supernet)."""

    def forward(self, x):
        return self.op(x)

    def after_relu(self, x):
        for i, layer in enumerate(self.op):
            if i:
                x = layer(x)
        return x


def _strided_polyphase_conv(x, weight, d, padding):
    """F.conv2d(x, weight, None, stride=d, padding, dilation=d, groups=C), computed without dilation: with the
    stride equal to the dilation, every output reads only the polyphase component xp[:, :, ::d, ::d] of the
    padded input, so a plain depthwise convolution of that component gives the same sums."""
    xp = F.pad(x, (padding, padding, padding, padding))
    return F.conv2d(xp[:, :, ::d, ::d], weight, None, 1, 0, 1, x.shape[1])


def _components(x, d):
    """The d*d polyphase components x[:, :, r::d, s::d] of an (N, C, H, W) tensor (H, W multiples of d) stacked
    into the batch, r-major: (d*d*N, C, H/d, W/d), channels-last."""
    N, C, H, W = x.shape
    hwc = x.permute(0, 2, 3, 1).reshape(N, H // d, d, W // d, d, C)
    return hwc.permute(2, 4, 0, 1, 3, 5).reshape(d * d * N, H // d, W // d, C).permute(0, 3, 1, 2)


class _DilatedDepthwise(torch.autograd.Function):
    """A stride-1 depthwise convolution with dilation d and 'same' padding d*(k-1)/2: PyTorch's forward; the input
    gradient as the same convolution of the output gradient with the flipped kernel; the weight gradient as that
    of a non-dilated convolution (padding (k-1)/2) over the stacked polyphase components of input and output
    gradient, in which every output sum is the same."""

    @staticmethod
    def forward(ctx, x, weight, d, padding):
        ctx.save_for_backward(x, weight)
        ctx.d, ctx.padding = d, padding
        return F.conv2d(x, weight, None, 1, padding, d, x.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        d, p, C = ctx.d, ctx.padding, x.shape[1]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, p, d, C)
        if ctx.needs_input_grad[1]:
            grad_w = _dilated_weight_grad(grad, x, weight, d, p)
        return grad_x, grad_w, None, None


def _dilated_weight_grad(grad, x, weight, d, p):
    """The weight gradient of _DilatedDepthwise: a non-dilated one over the stacked polyphase components, or, where
    a component is smaller than the kernel (oneDNN is slow there), one product sum per kernel tap."""
    N, C, H, W = x.shape
    k = weight.shape[-1]
    if H // d >= k and W // d >= k:
        q = p // d
        return torch.ops.aten.convolution_backward(_components(grad, d), _components(x, d), weight, None, [1, 1],
                                                   [q, q], [1, 1], False, [0, 0], C, [False, True, False])[1]
    xp = F.pad(x, (p, p, p, p))
    taps = [(grad * xp[:, :, d * i:d * i + H, d * j:d * j + W]).sum((0, 2, 3)) for i in range(k) for j in range(k)]
    return torch.stack(taps, 1).reshape(C, 1, k, k).to(weight.dtype)


def _polyphase_form(conv, x):
    """Which polyphase computation applies to DepthwiseConv2d `conv` on input x: 'strided', 'stride1' or None."""
    d, p, k = conv.dilation[0], conv.padding[0], conv.kernel_size[0]
    if (_dilated_form != 'polyphase' or d == 1 or x.device.type != 'cpu' or x.dim() != 4
            or conv.dilation != (d, d) or conv.padding != (p, p) or conv.kernel_size != (k, k)
            or conv.bias is not None or conv.groups != x.shape[1] or conv.padding_mode != 'zeros'):
        return None
    if conv.stride == (d, d):
        return 'strided'
    if conv.stride == (1, 1) and p == d * (k - 1) // 2 and x.shape[2] % d == 0 and x.shape[3] % d == 0:
        return 'stride1'
    return None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d (groups == channels, no bias; the same parameters and keys) whose dilated forms run
    through polyphase components on a CPU (see set_dilated_conv); under CPU autocast its dilated forms run in their
    weights' precision."""

    def forward(self, x):
        d = self.dilation[0]
        if d > 1 and x.device.type == 'cpu' and torch.is_autocast_enabled('cpu'):
            # oneDNN's bf16 backward of a dilated depthwise convolution can return non-finite weight gradients
            # (channels-last, torch 2.14.1); this one convolution runs in its weights' precision under CPU autocast.
            with torch.autocast('cpu', enabled=False):
                return self._forward(x.to(self.weight.dtype))
        return self._forward(x)

    def _forward(self, x):
        form = _polyphase_form(self, x)
        if form == 'strided':
            return _strided_polyphase_conv(x, self.weight, self.dilation[0], self.padding[0])
        if form == 'stride1':
            return _DilatedDepthwise.apply(x, self.weight, self.dilation[0], self.padding[0])
        return super().forward(x)


class ReLUConvBN(ReLUFirst):
    """ReLU, kxk conv, BN (cell preprocessing uses k=1). Keys: op.1 (conv), op.2 (BN)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

class DilConv(ReLUFirst):
    """ReLU, depthwise kxk conv (dilation 2), pointwise 1x1, BN. Keys: op.1, op.2 (convs), op.3 (BN)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                            groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

class SepConv(ReLUFirst):
    """Two (ReLU, depthwise kxk, pointwise 1x1, BN) blocks, the first with the stride.
    Keys: op.1, op.2, op.5, op.6 (convs), op.3, op.7 (BNs)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

class Conv7x1x1x7(ReLUFirst):
    """ReLU, 1x7 conv, 7x1 conv, BN (NASNet / AmoebaNet only). Keys: op.1, op.2, op.3."""

    def __init__(self, C, stride, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )

class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the output shape (stride 2 keeps every other row and column)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(ConvBNLayers, nn.Module):
    """Stride-2 'skip': ReLU, two 1x1 stride-2 convs (C_in -> C_out/2 each), the second on the input
    shifted by one pixel (x[:, :, 1:, 1:]), concatenated on channels, BN."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        assert C_out % 2 == 0, 'FactorizedReduce needs an even number of output channels'
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        return self.after_relu(self.relu(x))

    def after_relu(self, x):
        # (N, C_out/2, ceil(H/2), ceil(W/2)) each; equal sizes need even H and W, as in DARTS.
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)
