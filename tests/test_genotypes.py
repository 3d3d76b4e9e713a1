import json
import random

import pytest

import genotypes as G
from genotypes import GenotypeError

# The published cells, as candidates (14 + 14 integers) and as op:input lists, typed in independently of genotypes.py.
PUBLISHED_CANDIDATES = {
    'GENAS_FLATNESS_CIFAR10': '3,6,0,4,4,0,6,6,0,0,0,0,4,3, 5,2,0,6,4,0,3,0,6,0,0,5,0,7',
    'GENAS_ANGLE_FLATNESS_CIFAR10': '5,4,4,4,0,4,5,0,0,4,0,0,0,4, 7,7,2,3,0,4,1,0,0,0,0,0,5,6',
    'GENAS_FLATNESS_CIFAR100': '3,5,0,4,4,0,0,4,5,0,4,0,0,7, 6,3,2,0,5,0,5,0,7,0,1,1,0,0',
    'GENAS_ANGLE_FLATNESS_CIFAR100': '3,5,1,4,0,0,4,0,4,0,4,0,0,5, 6,4,0,7,2,1,3,0,0,0,4,0,0,7',
    'RLDARTS_OURS_GT': '5,5,2,5,0,4,4,0,0,0,4,0,0,4, 3,3,0,3,2,3,7,0,0,3,0,0,0,4',
}
PUBLISHED_LISTS = {
    'GENAS_ANGLE_FLATNESS_CIFAR10': (
        'sep_conv_5x5:0 sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:0 sep_conv_5x5:1 sep_conv_3x3:0 sep_conv_3x3:4',
        'dil_conv_5x5:0 dil_conv_5x5:1 avg_pool_3x3:0 skip_connect:1 sep_conv_3x3:0 max_pool_3x3:1 sep_conv_5x5:3 dil_conv_3x3:4'),
    'GENAS_ANGLE_FLATNESS_CIFAR100': (
        'skip_connect:0 sep_conv_5x5:1 max_pool_3x3:0 sep_conv_3x3:1 sep_conv_3x3:1 sep_conv_3x3:3 sep_conv_3x3:1 sep_conv_5x5:4',
        'dil_conv_3x3:0 sep_conv_3x3:1 dil_conv_5x5:1 avg_pool_3x3:2 max_pool_3x3:0 skip_connect:1 sep_conv_3x3:1 dil_conv_5x5:4'),
    'GENAS_FLATNESS_CIFAR10': (
        'skip_connect:0 dil_conv_3x3:1 sep_conv_3x3:1 sep_conv_3x3:2 dil_conv_3x3:1 dil_conv_3x3:2 sep_conv_3x3:3 skip_connect:4',
        'sep_conv_5x5:0 avg_pool_3x3:1 dil_conv_3x3:1 sep_conv_3x3:2 skip_connect:1 dil_conv_3x3:3 sep_conv_5x5:2 dil_conv_5x5:4'),
    'GENAS_FLATNESS_CIFAR100': (
        'skip_connect:0 sep_conv_5x5:1 sep_conv_3x3:1 sep_conv_3x3:2 sep_conv_3x3:2 sep_conv_5x5:3 sep_conv_3x3:1 dil_conv_5x5:4',
        'dil_conv_3x3:0 skip_connect:1 avg_pool_3x3:0 sep_conv_5x5:2 sep_conv_5x5:1 dil_conv_5x5:3 max_pool_3x3:1 max_pool_3x3:2'),
    'RLDARTS_OURS_GT': (
        'sep_conv_5x5:0 sep_conv_5x5:1 avg_pool_3x3:0 sep_conv_5x5:1 sep_conv_3x3:0 sep_conv_3x3:1 sep_conv_3x3:1 sep_conv_3x3:4',
        'skip_connect:0 skip_connect:1 skip_connect:1 avg_pool_3x3:2 skip_connect:0 dil_conv_5x5:1 skip_connect:0 sep_conv_3x3:4'),
}


def _pairs(text):
    return [(op, int(i)) for op, i in (p.split(':') for p in text.split())]


def test_primitives_in_the_reference_order():
    assert G.PRIMITIVES == ['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                            'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5']


def test_repair_makes_random_candidates_valid_and_roundtrips():
    rng = random.Random(0)
    for _ in range(10_000):
        raw = [rng.randint(0, 7) for _ in range(28)]
        cand = G.repair(raw, rng)
        assert G.is_valid(cand)
        # repair only touches what it must: a node that was valid stays as it was
        for half in (0, 14):
            for start, end in G.NODE_SLICES:
                seg = raw[half + start:half + end]
                if sum(c != 0 for c in seg) == 2:
                    assert cand[half + start:half + end] == seg
        assert G.encode(G.decode(cand)) == cand


def test_decode_lists_ops_in_edge_order():
    cand = G.parse_candidate(PUBLISHED_CANDIDATES['GENAS_FLATNESS_CIFAR10'])
    g = G.decode(cand)
    assert g.normal[:4] == [('skip_connect', 0), ('dil_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)]
    assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [2, 3, 4, 5]


@pytest.mark.parametrize('name', sorted(PUBLISHED_LISTS))
def test_published_candidates_decode_to_the_published_lists(name):
    g = G.decode(G.parse_candidate(PUBLISHED_CANDIDATES[name]))
    normal, reduce = PUBLISHED_LISTS[name]
    assert g.normal == _pairs(normal) and g.reduce == _pairs(reduce)
    assert g == G.GENOTYPES[name]
    assert getattr(G, name) == g          # module-level constant, as in the reference


def test_rldarts_candidate():
    assert G.encode(G.RLDARTS) == [int(c) for c in '5,4,5,0,5,0,0,5,5,0,0,0,7,4,5,4,2,0,5,0,0,4,4,0,4,4,0,0'.split(',')]


def test_aliases_and_lookup():
    assert G.get_genotype('DARTS') is G.DARTS_V2_CIFAR10
    assert G.get_genotype('DARTS_V1') is G.DARTS_V1_CIFAR10
    assert G.get_genotype('PDARTS') is G.PDARTS_CIFAR10
    assert G.get_genotype('PC_DARTS') is G.PCDARTS_OURS
    assert G.get_genotype('pc-darts') is G.PCDARTS_OURS
    assert G.get_genotype('genas_flatness_cifar10') is G.GENAS_FLATNESS_CIFAR10


def test_unknown_name_lists_known_ones():
    with pytest.raises(GenotypeError) as e:
        G.get_genotype('NOT_A_CELL')
    assert 'NOT_A_CELL' in str(e.value) and 'GENAS_FLATNESS_CIFAR100' in str(e.value) and 'DARTS_V2' in str(e.value)


def test_invalid_candidate_names_the_problem():
    cand = G.parse_candidate(PUBLISHED_CANDIDATES['GENAS_FLATNESS_CIFAR10'])
    cand[4] = 0                      # node 1 of the normal cell now has one input
    with pytest.raises(GenotypeError, match=r'normal cell: node 1 .* has 1 non-none'):
        G.check_valid(cand)
    with pytest.raises(GenotypeError, match='28 op codes'):
        G.check_valid(cand[:27])
    with pytest.raises(GenotypeError, match='0..7'):
        G.check_valid(cand[:27] + [9])
    with pytest.raises(GenotypeError, match='28 integers'):
        G.parse_candidate('1,2,x')


def test_encode_rejects_genotypes_outside_the_space():
    assert G.try_encode(G.NASNet) is None and G.try_encode(G.AmoebaNet) is None
    with pytest.raises(GenotypeError, match='concat'):
        G.encode(G.NASNet)


@pytest.mark.parametrize('name', sorted(G.GENOTYPES))
def test_json_roundtrip_every_named_genotype(name, tmp_path):
    g = G.GENOTYPES[name]
    path = G.save_genotype(tmp_path / 'g.json', g, name=name)
    doc = json.loads(path.read_text())
    assert doc['name'] == name and doc['candidate'] == G.try_encode(g)
    assert G.load_genotype(path) == G.validate_genotype(g)
    assert G.resolve_genotype(str(path)) == g


@pytest.mark.parametrize('content, message', [
    ('{not json', 'not valid JSON'),
    ('[]', 'needs a "genotype"'),
    ('{"genotype": {"normal": [["bogus_op", 0]]}}', 'normal, normal_concat'),
    ('{"candidate": [1, 2, 3]}', '28 op codes'),
])
def test_malformed_genotype_files(tmp_path, content, message):
    path = tmp_path / 'bad.json'
    path.write_text(content)
    with pytest.raises(GenotypeError, match=message):
        G.load_genotype(path)


def test_genotype_file_with_unknown_op_or_bad_input(tmp_path):
    d = G.genotype_to_dict(G.DARTS_V2)
    d['normal'][0] = ['conv_9x9', 0]
    (tmp_path / 'a.json').write_text(json.dumps({'genotype': d}))
    with pytest.raises(GenotypeError, match="unknown op 'conv_9x9'"):
        G.load_genotype(tmp_path / 'a.json')
    d = G.genotype_to_dict(G.DARTS_V2)
    d['normal'][0] = ['sep_conv_3x3', 5]
    (tmp_path / 'b.json').write_text(json.dumps({'genotype': d}))
    with pytest.raises(GenotypeError, match='cannot take input 5'):
        G.load_genotype(tmp_path / 'b.json')


def test_candidate_and_genotype_must_agree(tmp_path):
    doc = {'genotype': G.genotype_to_dict(G.DARTS_V2), 'candidate': G.encode(G.GENAS_FLATNESS_CIFAR10)}
    (tmp_path / 'c.json').write_text(json.dumps(doc))
    with pytest.raises(GenotypeError, match='different cells'):
        G.load_genotype(tmp_path / 'c.json')


def test_candidate_only_file(tmp_path):
    cand = G.parse_candidate(PUBLISHED_CANDIDATES['GENAS_FLATNESS_CIFAR100'])
    (tmp_path / 'c.json').write_text(json.dumps({'candidate': cand}))
    assert G.load_genotype(tmp_path / 'c.json') == G.GENAS_FLATNESS_CIFAR100
