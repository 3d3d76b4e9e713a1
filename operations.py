"""Candidate operations of the DARTS space: `OPS[name](C, stride, affine) -> nn.Module`.

Every op maps C channels to C channels; stride 2 halves the spatial size. Module names inside each
op (`op.{n}`, `conv_1`, `conv_2`, `bn`) are fixed by the reference checkpoints.
This module is a leaf: it imports nothing from the project.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

# How a CPU computes gradients where PyTorch's own kernels are slow; each form changes gradients in their last bits
# only (another order of the same sums; forward outputs are the same bit for bit), so a run keeps the form it
# started with (see set_grad_form). Other devices always run 'direct'.
# - 'direct': PyTorch's own kernels; what a run made before these forms existed used, so such a run resumes bit for
#   bit.
# - 'polyphase': dilated depthwise convolutions (the dil_conv ops) through polyphase components. oneDNN's kernels
#   for their backward pass are several times slower than for non-dilated ones; with dilation d, each polyphase
#   component x[..., r::d, s::d] of the input only meets itself, so the same sums run through non-dilated kernels:
#   a strided one (stride == dilation, as in reduction cells) as a plain convolution of one component; a stride-1
#   one keeps the direct forward and computes its input gradient as the dilated forward of the flipped kernel and
#   its weight gradient from the d*d components stacked into the batch.
# - 'dense' (new runs): 'polyphase', and a cell's concatenated output hands each node a dense gradient
#   (cat_channels): a plain torch.cat hands out strided views of its gradient, on which BN's backward kernel is
#   several times slower in channels-last memory.
GRAD_FORMS = ('dense', 'polyphase', 'direct')
_grad_form = GRAD_FORMS[0]


def set_grad_form(form):
    """Choose how a CPU computes the gradients of dil_conv ops and cell outputs from now on (one of GRAD_FORMS)."""
    global _grad_form
    if form not in GRAD_FORMS:
        raise ValueError(f'gradient form {form!r}: choose from {", ".join(GRAD_FORMS)}')
    _grad_form = form


def grad_form():
    """The gradient form in use now (see set_grad_form)."""
    return _grad_form


@contextlib.contextmanager
def using_grad_form(form):
    """Within: gradients run in `form`; the previous form afterwards."""
    before = _grad_form
    set_grad_form(form)
    try:
        yield
    finally:
        set_grad_form(before)


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


class _Slice(torch.autograd.Function):
    """x[:, :, rows, cols] as a tensor of x's memory format, whose gradient keeps that format too: a plain slice's
    gradient is a contiguous (channels-first) tensor, which in a channels-last network makes the backward ops
    after it convert between the formats."""

    @staticmethod
    def forward(ctx, x, rows, cols):
        ctx.shape, ctx.fmt, ctx.index = x.shape, _memory_format(x), (slice(None), slice(None), rows, cols)
        return x[ctx.index].contiguous(memory_format=ctx.fmt)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_x = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt).zero_()
        grad_x[ctx.index] = grad
        return grad_x, None, None


def _memory_format(x):
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format


def spatial_slice(x, rows, cols):
    """x[:, :, rows, cols] (slice objects) for an (N, C, H, W) tensor, in x's memory format in both passes."""
    return _Slice.apply(x, rows, cols)


class _CatChannels(torch.autograd.Function):
    """torch.cat(tensors, dim=1) whose input gradients are dense tensors of the output's memory format."""

    @staticmethod
    def forward(ctx, *tensors):
        out = torch.cat(tensors, dim=1)
        ctx.sizes, ctx.fmt = [t.shape[1] for t in tensors], _memory_format(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return tuple(g.contiguous(memory_format=ctx.fmt) for g in grad.split(ctx.sizes, dim=1))


def cat_channels(tensors):
    """torch.cat(tensors, dim=1); in the 'dense' gradient form on a CPU each input's gradient is a dense tensor of
    the output's memory format instead of a strided view of the output's gradient."""
    if _grad_form == 'dense' and tensors[0].device.type == 'cpu' and torch.is_grad_enabled():
        return _CatChannels.apply(*tensors)
    return torch.cat(tensors, dim=1)


def _strided_polyphase_conv(x, weight, d, padding):
    """F.conv2d(x, weight, None, stride=d, padding, dilation=d, groups=C), computed without dilation: with the
    stride equal to the dilation, every output reads only the polyphase component xp[:, :, ::d, ::d] of the
    padded input, so a plain depthwise convolution of that component gives the same sums."""
    xp = F.pad(x, (padding, padding, padding, padding))
    return F.conv2d(spatial_slice(xp, slice(None, None, d), slice(None, None, d)), weight, None, 1, 0, 1,
                    x.shape[1])


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
    if (_grad_form == 'direct' or d == 1 or x.device.type != 'cpu' or x.dim() != 4
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
    through polyphase components on a CPU (see set_grad_form); under CPU autocast its dilated forms run in their
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
    Keys: op.1, op.2, op.5, op.6 (convs), op.3, op.7 (BNs). The second ReLU rectifies the first BN's output in place:
    nothing else reads it (BN's backward keeps its input, not its output), so the values are the same with one
    tensor less to write."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=True),
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
        out = torch.cat([self.conv_1(x), self.conv_2(spatial_slice(x, slice(1, None), slice(1, None)))], dim=1)
        return self.bn(out)
