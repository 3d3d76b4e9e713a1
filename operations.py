"""Candidate operations of the DARTS space: `OPS[name](C, stride, affine) -> nn.Module`.

Every op maps C channels to C channels; stride 2 halves the spatial size. Module names inside each
op (`op.{n}`, `conv_1`, `conv_2`, `bn`) are fixed by the reference checkpoints.
This module is a leaf: it imports nothing from the project.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# Strided dilated depthwise convolutions (stride == dilation) of channels-last tensors can run as non-dilated ones
# on one polyphase component of the input (the same products and sums). oneDNN has no fast kernel for dilated
# depthwise convolutions: their backward pass is several times slower. Off by default: its gradients differ from
# the direct convolution's in the last bits, so a run started by an earlier version of this code would no longer
# resume to that version's result bit for bit.
POLYPHASE_DILATED = False

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


def _polyphase_conv(x, weight, d, padding):
    """F.conv2d(x, weight, None, stride=d, padding, dilation=d, groups=C), computed without dilation: with the
    stride equal to the dilation, every output reads only the polyphase component xp[:, :, ::d, ::d] of the
    padded input, so a plain depthwise convolution of that component gives the same sums."""
    xp = F.pad(x, (padding, padding, padding, padding))
    return F.conv2d(xp[:, :, ::d, ::d], weight, None, 1, 0, 1, x.shape[1])


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d (groups == channels, no bias; the same parameters and keys) whose strided dilated
    form (stride == dilation, as in reduction cells) runs on one polyphase component of channels-last inputs
    (see POLYPHASE_DILATED); under CPU autocast its dilated forms run in their weights' precision."""

    def forward(self, x):
        d, p = self.dilation[0], self.padding[0]
        if (POLYPHASE_DILATED and d > 1 and x.dim() == 4 and self.dilation == (d, d) and self.stride == (d, d)
                and self.padding == (p, p) and self.bias is None and self.groups == x.shape[1]
                and x.is_contiguous(memory_format=torch.channels_last)):
            return _polyphase_conv(x, self.weight, d, p)
        if d > 1 and x.device.type == 'cpu' and torch.is_autocast_enabled('cpu'):
            # oneDNN's bf16 backward of a dilated depthwise convolution can return non-finite weight gradients
            # (channels-last, torch 2.14.1); this one convolution runs in its weights' precision under CPU autocast.
            with torch.autocast('cpu', enabled=False):
                return super().forward(x.to(self.weight.dtype))
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
