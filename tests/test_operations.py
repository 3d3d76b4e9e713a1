import random

import pytest
import torch

import genotypes as G
from operations import OPS, FactorizedReduce, ReLUConvBN, Zero
from spaces.darts_supernet import Network


def test_every_primitive_and_extra_op_has_a_constructor():
    assert set(G.PRIMITIVES) | set(G.EXTRA_OPS) == set(OPS)


@pytest.mark.parametrize('name', sorted(OPS))
@pytest.mark.parametrize('C', [4, 8])
@pytest.mark.parametrize('stride', [1, 2])
def test_op_output_shape(name, C, stride):
    torch.manual_seed(0)
    op = OPS[name](C, stride, True)
    x = torch.randn(2, C, 8, 8)
    y = op(x)
    assert y.shape == (2, C, 8 // stride, 8 // stride)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize('stride', [1, 2])
def test_none_gives_zeros(stride):
    x = torch.randn(2, 4, 8, 8)
    y = Zero(stride)(x)
    assert y.shape == (2, 4, 8 // stride, 8 // stride) and not y.any()


def test_factorized_reduce_uses_the_shifted_input():
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 4).eval()
    x = torch.rand(1, 4, 8, 8) + 0.1          # positive, so the ReLU passes it unchanged
    base = fr(x)
    even, odd = x.clone(), x.clone()
    even[0, :, 0, 0] += 1.0                    # a pixel only conv_1 (unshifted, stride 2) sees
    odd[0, :, 1, 1] += 1.0                     # a pixel only conv_2 (input shifted by one) sees
    d_even, d_odd = (fr(even) - base).abs(), (fr(odd) - base).abs()
    assert d_even[:, :2].sum() > 0 and d_even[:, 2:].sum() == 0
    assert d_odd[:, 2:].sum() > 0 and d_odd[:, :2].sum() == 0
    assert d_odd[0, 2:, 0, 0].sum() > 0        # lands at output (0, 0) of the second half


def test_avg_pool_excludes_padding():
    op = OPS['avg_pool_3x3'](1, 1, True)
    y = op(torch.ones(1, 1, 4, 4))
    assert torch.allclose(y, torch.ones_like(y))   # corners average 4 ones, not 4/9


def test_state_dict_names_match_the_reference_layout():
    assert set(OPS['sep_conv_3x3'](4, 1, True).state_dict()) >= {'op.1.weight', 'op.2.weight', 'op.3.weight',
                                                                  'op.5.weight', 'op.6.weight', 'op.7.bias'}
    assert set(OPS['dil_conv_5x5'](4, 1, True).state_dict()) >= {'op.1.weight', 'op.2.weight', 'op.3.running_var'}
    assert {'conv_1.weight', 'conv_2.weight', 'bn.weight'} <= set(OPS['skip_connect'](4, 2, True).state_dict())
    assert OPS['dil_conv_3x3'](4, 1, True).op[1].dilation == (2, 2)


@pytest.mark.parametrize('name, stride, convs, bns', [
    ('sep_conv_3x3', 1, ['op.1', 'op.2', 'op.5', 'op.6'], ['op.3', 'op.7']),
    ('dil_conv_5x5', 2, ['op.1', 'op.2'], ['op.3']),
    ('conv_7x1_1x7', 1, ['op.1', 'op.2'], ['op.3']),
    ('skip_connect', 2, ['conv_1', 'conv_2'], ['bn']),
])
def test_named_conv_and_bn_layers_in_forward_order(name, stride, convs, bns):
    """The angle metric reads an op's weights through `convs` and `bns`: they name the reference's layers in
    forward order (a reordered nn.Sequential would change the angle vector, and fails here)."""
    op = OPS[name](4, stride, True)
    names = {m: n for n, m in op.named_modules()}
    assert [names[m] for m in op.convs] == convs and [names[m] for m in op.bns] == bns
    pre = ReLUConvBN(4, 8, 1, 1, 0)
    assert pre.convs == [pre.op[1]] and pre.bns == [pre.op[2]]


@pytest.mark.parametrize('k, H', [(3, 32), (5, 16), (3, 7)])
def test_strided_dilated_depthwise_conv_on_one_polyphase_component_equals_the_dilated_conv(monkeypatch, k, H):
    """dil_conv with stride 2 (reduction cells) on channels-last input runs a non-dilated conv of xp[::2, ::2]:
    the same output, input gradient and weight gradient as PyTorch's dilated depthwise conv."""
    import operations
    calls = []
    monkeypatch.setattr(operations, 'POLYPHASE_DILATED', True)
    real = operations._polyphase_conv
    monkeypatch.setattr(operations, '_polyphase_conv', lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    conv = operations.DepthwiseConv2d(8, 8, k, stride=2, padding=k - 1, dilation=2, groups=8, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(4, 8, H, H).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = conv(x)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), g)
    want = torch.nn.functional.conv2d(x, conv.weight, None, 2, k - 1, 2, 8)
    wx, ww = torch.autograd.grad(want, (x, conv.weight), g)
    assert calls == [1]
    assert y.shape == want.shape
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, wx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, ww, rtol=1e-4, atol=1e-4)   # sums of H*W*N products, another order


def test_dil_conv_keeps_its_keys_and_conv_type():
    import operations
    op = OPS['dil_conv_3x3'](8, 2, True)
    assert isinstance(op.op[1], torch.nn.Conv2d) and isinstance(op.op[1], operations.DepthwiseConv2d)
    assert [k for k in op.state_dict() if k.endswith('weight')][:2] == ['op.1.weight', 'op.2.weight']


def test_dilated_depthwise_gradients_stay_finite_under_cpu_bf16_autocast():
    """oneDNN's bf16 backward of dilated depthwise convolutions (channels-last) returned non-finite weight
    gradients for some paths of this small supernet (seed 0: 5 dil_conv_5x5 weights in 30 paths); those
    convolutions run in fp32 under CPU autocast, so every gradient is finite."""
    torch.manual_seed(0)
    net = Network(4, 10, 3).to(memory_format=torch.channels_last)
    rng = random.Random(0)
    x = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    for _ in range(30):
        cand = G.random_candidate(rng)
        net.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = net(x, cand[:14], cand[14:])
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, (cand, bad)
