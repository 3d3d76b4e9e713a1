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


@pytest.mark.parametrize('fmt', [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize('rows, cols', [(slice(1, None), slice(1, None)), (slice(None, None, 2), slice(1, None, 2))])
def test_spatial_slice_is_a_slice_in_the_input_memory_format(fmt, rows, cols):
    """The values and gradient of x[:, :, rows, cols]; both in x's memory format (a plain slice's gradient is
    channels-first, which sends a channels-last network's later backward ops through format conversions)."""
    from operations import spatial_slice
    x = torch.randn(2, 3, 7, 8).contiguous(memory_format=fmt).requires_grad_()
    y = spatial_slice(x, rows, cols)
    assert torch.equal(y, x[:, :, rows, cols]) and y.is_contiguous(memory_format=fmt)
    g = torch.randn(y.shape)
    (got,) = torch.autograd.grad(y, x, g)
    want = torch.zeros(x.shape)
    want[:, :, rows, cols] = g
    assert torch.equal(got, want) and got.is_contiguous(memory_format=fmt)


def test_stride_2_ops_keep_a_channels_last_gradient():
    """FactorizedReduce (its shifted input) and the strided polyphase dil_conv (one component of the padded input)
    slice their input; the gradient of that input stays channels-last."""
    import operations
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 4).to(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 3, 3)
    for op in (fr.after_relu, lambda x: operations._strided_polyphase_conv(x, w, 2, 2)):
        x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
        y = op(x)
        (got,) = torch.autograd.grad(y, x, torch.randn(y.shape).contiguous(memory_format=torch.channels_last))
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('stride', [1, 2])
def test_sep_conv_in_place_relu_changes_nothing(stride):
    """SepConv's second ReLU runs in place: output and every gradient equal the out-of-place ReLU's bit for bit,
    and the op's input is left as it was."""
    results = []
    for inplace in (True, False):
        torch.manual_seed(0)
        op = OPS['sep_conv_3x3'](4, stride, True)
        op.op[4].inplace = inplace
        x = torch.randn(2, 4, 8, 8)
        before = x.clone()
        xg = x.requires_grad_()
        y = op(xg)
        grads = torch.autograd.grad(y, [xg] + list(op.parameters()), torch.randn(y.shape))
        assert torch.equal(x.detach(), before)
        results.append([y.detach()] + list(grads))
    assert all(torch.equal(a, b) for a, b in zip(*results))


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


@pytest.fixture
def dilated_form():
    """Set operations' gradient form for one test; the default afterwards."""
    import operations
    yield operations.set_grad_form
    operations.set_grad_form(operations.GRAD_FORMS[0])


def _dilated_grads(operations, form, k, stride, H, fmt, C=8):
    operations.set_grad_form(form)
    torch.manual_seed(0)
    conv = operations.DepthwiseConv2d(C, C, k, stride=stride, padding=k - 1, dilation=2, groups=C, bias=False)
    x = torch.randn(4, C, H, H).contiguous(memory_format=fmt).requires_grad_()
    y = conv(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    return (y,) + torch.autograd.grad(y, (x, conv.weight), g)


# (k, stride, H): reduction cells (stride 2, odd H: one component is shorter), normal cells (stride 1; H 4 with k=5:
# the components are smaller than the kernel, the per-tap weight gradient), H 7 odd with stride 1 (direct).
@pytest.mark.parametrize('k, stride, H', [(3, 2, 32), (5, 2, 16), (3, 2, 7), (3, 1, 16), (5, 1, 8), (5, 1, 4),
                                          (3, 1, 7)])
@pytest.mark.parametrize('fmt', [torch.channels_last, torch.contiguous_format])
def test_polyphase_dilated_conv_equals_the_direct_one(dilated_form, k, stride, H, fmt):
    """dil_conv through polyphase components: the forward of PyTorch's dilated depthwise convolution bit for bit,
    its input and weight gradients to float rounding (the same sums in another order)."""
    import operations
    want = _dilated_grads(operations, 'direct', k, stride, H, fmt)
    got = _dilated_grads(operations, 'polyphase', k, stride, H, fmt)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-4)   # sums of N*H*W products


@pytest.mark.parametrize('k, stride, H, form', [(3, 2, 8, 'strided'), (3, 1, 8, 'stride1'), (5, 1, 4, 'stride1'),
                                                 (3, 1, 7, None), (3, 3, 9, None)])
def test_which_dilated_convs_take_the_polyphase_path(dilated_form, k, stride, H, form):
    """Stride == dilation, or stride 1 with 'same' padding and sizes divisible by the dilation; else PyTorch's."""
    import operations
    conv = operations.DepthwiseConv2d(4, 4, k, stride=stride, padding=k - 1, dilation=2, groups=4, bias=False)
    x = torch.zeros(2, 4, H, H)
    assert operations._polyphase_form(conv, x) == form
    dilated_form('direct')
    assert operations._polyphase_form(conv, x) is None


def test_polyphase_gradients_differ_from_direct_only_in_the_last_bits(dilated_form):
    """The two forms are not the same computation (else the choice would need no record): some weight gradient
    differs, by float rounding only."""
    import operations
    want = _dilated_grads(operations, 'direct', 5, 1, 16, torch.channels_last, C=16)
    got = _dilated_grads(operations, 'polyphase', 5, 1, 16, torch.channels_last, C=16)
    assert not torch.equal(got[2], want[2])
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('form, dense', [('dense', True), ('polyphase', False), ('direct', False)])
def test_cat_channels_hands_out_dense_gradients_in_the_dense_form(dilated_form, form, dense):
    """torch.cat's values and gradients; in the dense form each input's gradient is a dense channels-last tensor
    (torch.cat's are strided views of the output's gradient)."""
    from operations import cat_channels
    dilated_form(form)
    xs = [torch.randn(2, c, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_() for c in (3, 5)]
    y = cat_channels(xs)
    assert torch.equal(y, torch.cat(xs, 1))
    g = torch.randn(y.shape).contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(y, xs, g)
    assert torch.equal(grads[0], g[:, :3]) and torch.equal(grads[1], g[:, 3:])
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in grads) == dense


def test_dense_gradients_differ_from_polyphase_only_in_the_last_bits(dilated_form):
    """A supernet step's gradients in the dense and polyphase forms: equal to float rounding, not bit for bit (else
    the form would need no record)."""
    grads = {}
    for form in ('polyphase', 'dense'):
        dilated_form(form)
        torch.manual_seed(0)
        net = Network(C=8, num_classes=5, layers=5).to(memory_format=torch.channels_last)
        x = torch.randn(16, 3, 16, 16).contiguous(memory_format=torch.channels_last)
        net.forward_candidate(x, G.random_candidate(random.Random(1))).square().mean().backward()
        grads[form] = [p.grad for p in net.parameters() if p.grad is not None]
    assert not all(torch.equal(a, b) for a, b in zip(grads['dense'], grads['polyphase']))
    for a, b in zip(grads['dense'], grads['polyphase']):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


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
