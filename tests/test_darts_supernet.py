import random

import torch

import genotypes as G
from spaces.darts_supernet import Network


def test_state_dict_matches_the_reference_numbers():
    net = Network(C=16, num_classes=10, layers=8)
    sd = net.state_dict()
    params = list(net.parameters())
    assert len(sd) == 6042
    assert len(params) == 3255
    assert sum(p.numel() for p in params) == 2_005_114
    for key in ['stem.0.weight', 'stem.1.running_mean', 'cells.0.preprocess0.op.1.weight',
                'cells.3.preprocess0.conv_1.weight', 'cells.3.preprocess0.bn.bias', 'cells.3.preprocess1.op.2.weight',
                'cells.0._ops.0._ops.1.1.weight', 'cells.0._ops.13._ops.4.op.7.bias',
                'cells.2._ops.0._ops.3.conv_2.weight', 'cells.7._ops.5._ops.7.op.3.weight', 'classifier.bias']:
        assert key in sd, key
    assert sd['stem.0.weight'].shape == (48, 3, 3, 3)
    assert sd['classifier.weight'].shape == (10, 256)


def _candidate_with(edge, code, base):
    """A valid candidate with `code` on `edge` (0..27), built from `base`."""
    cand = list(base)
    half, e = divmod(edge, 14)
    node = next(i for i, (s, t) in enumerate(G.NODE_SLICES) if s <= e < t)
    start, end = G.NODE_SLICES[node]
    others = [x for x in range(start, end) if x != e]
    for x in range(start, end):
        cand[14 * half + x] = 0
    if code == 0:
        cand[14 * half + others[0]] = cand[14 * half + others[1]] = 4
    else:
        cand[14 * half + e] = code
        cand[14 * half + others[0]] = 5
    return cand


def test_every_op_on_every_edge_is_reachable_and_runs():
    torch.manual_seed(0)
    net = Network(C=4, num_classes=3, layers=3).eval()
    ran = set()
    for cell in range(3):
        for e in range(14):
            for code in range(8):
                for mod in net.cells[cell].edges[e].ops[code].modules():   # the op or any of its layers
                    mod.register_forward_hook(lambda m, i, o, key=(cell, e, code): ran.add(key))
    base = G.encode(G.DARTS_V2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for edge in range(28):
            for code in range(1, 8):
                cand = _candidate_with(edge, code, base)
                assert G.is_valid(cand)
                net.forward_candidate(x, cand)
    expected = {(c, e, k) for c in range(3) for e in range(14) for k in range(1, 8)}
    assert expected <= ran
    # `none` is expressed by skipping the edge: its zeros are never computed
    assert not any(k == 0 for _, _, k in ran)


def test_none_is_in_valid_candidates_on_every_edge_but_node_zeros():
    for edge in range(28):
        if edge % 14 < 2:
            continue
        assert G.is_valid(_candidate_with(edge, 0, G.encode(G.DARTS_V2)))


def test_forward_touches_only_the_path():
    torch.manual_seed(0)
    net = Network(C=4, num_classes=5, layers=3)
    cand = G.random_candidate(random.Random(3))
    out = net.forward_candidate(torch.randn(4, 3, 16, 16), cand)
    assert out.shape == (4, 5)
    out.sum().backward()
    on_path = {id(p) for p in net.path_parameters(cand)}
    for name, p in net.named_parameters():
        if id(p) in on_path:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert len(on_path) == len(net.path_parameters(cand))     # each parameter listed once


def test_fast_forward_equals_the_literal_formulation():
    """Shared ReLUs and skipped `none` edges compute exactly what one ReLU per op and summed zeros do."""
    torch.manual_seed(0)
    net = Network(C=4, num_classes=5, layers=4)
    x = torch.randn(3, 3, 16, 16)
    for seed in range(5):
        cand = G.random_candidate(random.Random(seed))
        net.eval()
        with torch.no_grad():
            assert torch.equal(net.forward_candidate(x, cand), net.forward_reference(x, cand[:14], cand[14:]))
        net.train()
        fast = net.forward_candidate(x, cand)
        fast.sum().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        net.zero_grad(set_to_none=True)
        ref = net.forward_reference(x, cand[:14], cand[14:])
        assert torch.equal(fast, ref)
        ref.sum().backward()
        for n, p in net.named_parameters():
            if n in grads:
                assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n
        net.zero_grad(set_to_none=True)


def test_recalibration_uses_an_exact_cumulative_average_and_is_restored():
    torch.manual_seed(0)
    net = Network(C=4, num_classes=5, layers=3)
    cand = G.random_candidate(random.Random(2))
    batches = [(torch.randn(8, 3, 16, 16), None) for _ in range(3)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with net.preserved_path(cand):
        net.recalibrate_bn(cand, batches, momentum=None)
        stem_bn = net.stem[1]
        # the stem BN sees the stem conv output; its running mean is the mean of the 3 batch means
        with torch.no_grad():
            means = [net.stem[0](x).mean(dim=(0, 2, 3)) for x, _ in batches]
        assert torch.allclose(stem_bn.running_mean, torch.stack(means).mean(0), atol=1e-6)
        assert int(stem_bn.num_batches_tracked) == 3
        assert not net.training
    assert net.stem[1].momentum == 0.1
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
