"""The search-space interface, the same checks for every registered space."""
import random

import pytest
import torch

import genotypes
from spaces import SPACE_NAMES, get_space

SHAPE = {'darts': (4, 3), 'nb201': (4, 1)}       # (C, layers) of a tiny supernet


@pytest.mark.parametrize('name', SPACE_NAMES)
def test_candidates_round_trip_through_every_readable_form(name, tmp_path):
    space, rng = get_space(name), random.Random(0)
    for _ in range(50):
        cand = space.random_candidate(rng)
        assert len(cand) == space.candidate_len and space.check(cand) == cand
        assert space.encode(space.decode(cand)) == cand
        assert space.parse(','.join(map(str, cand))) == cand
        kid = space.crossover(cand, space.mutate(cand, rng, 0.5), rng)
        assert space.check(kid) == kid
    path = space.save_result(tmp_path / 'genotype.json', cand, name='x', score=1.0)
    assert space.resolve_arch(str(path)) == cand
    with pytest.raises(genotypes.GenotypeError):
        space.parse('1,2,3')


@pytest.mark.parametrize('name', SPACE_NAMES)
def test_supernet_standalone_and_angle_vector(name):
    space, rng = get_space(name), random.Random(1)
    C, layers = SHAPE[name]
    torch.manual_seed(0)
    net, other = space.build_supernet(C, 5, layers).eval(), space.build_supernet(C, 5, layers).eval()
    x = torch.randn(2, 3, 32, 32)
    cand = space.random_candidate(rng)
    assert net(x, *space.forward_args(cand)).shape == net.forward_candidate(x, cand).shape == (2, 5)
    fixed = space.standalone(cand, C, 5, layers).eval()
    out = fixed(x)
    assert (out[0] if isinstance(out, tuple) else out).shape == (2, 5)
    vec = space.angle_vector(net, cand)
    assert vec.dtype == torch.float64 and vec.dim() == 1
    with torch.no_grad():        # weights off the path leave the vector alone
        off = set(map(id, net.path_parameters(cand)))
        for p in net.parameters():
            if id(p) not in off:
                p.add_(1.0)
    assert torch.equal(space.angle_vector(net, cand), vec)
    assert not torch.equal(space.angle_vector(other, cand), vec)


def test_darts_space_is_todays_genotypes_module():
    space = get_space('darts')
    a, b = random.Random(3), random.Random(3)
    assert [space.random_candidate(a) for _ in range(20)] == [genotypes.random_candidate(b) for _ in range(20)]
    assert space.decode(genotypes.encode(genotypes.DARTS_V2)) == genotypes.decode(genotypes.encode(genotypes.DARTS_V2))
    assert space.resolve_arch('DARTS_V2') == genotypes.encode(genotypes.DARTS_V2)
    assert space.default_layers == 8


def test_unknown_space_is_a_clear_error():
    with pytest.raises(genotypes.GenotypeError, match='choose one of darts, nb201'):
        get_space('nasbench101')


def _network_grads(shared_relu, auxiliary, drop_prob):
    """Logits and input/parameter gradients of a small NetworkCIFAR in training mode; without `shared_relu` each
    cell rectifies its own inputs (Cell.forward, as the reference's cells do)."""
    import genotypes
    torch.manual_seed(0)
    net = get_space('darts').network(genotypes.GENAS_FLATNESS_CIFAR10, 8, 10, 5, auxiliary=auxiliary).train()
    net.drop_path_prob = drop_prob
    if not shared_relu:
        net.share_relu = False
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
    torch.manual_seed(5)                                     # the drop-path masks
    logits, logits_aux = net(x)
    loss = logits.square().sum() + (logits_aux.square().sum() if auxiliary else 0)
    return logits, torch.autograd.grad(loss, [x] + list(net.parameters()))


@pytest.mark.parametrize('auxiliary, drop_prob', [(False, 0.0), (True, 0.2)])
def test_network_rectifies_each_cell_output_once_with_the_same_results(auxiliary, drop_prob):
    """NetworkCIFAR applies one ReLU to each cell output for the two cells that read it: logits and every gradient
    equal those of ReLUs per cell bit for bit."""
    logits, grads = _network_grads(True, auxiliary, drop_prob)
    want_logits, want_grads = _network_grads(False, auxiliary, drop_prob)
    assert torch.equal(logits, want_logits)
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))
