"""The DARTS search space: primitives, genotypes, 28-int candidates and the named cells.

A *candidate* is 28 ints: 14 edge codes for the normal cell, then 14 for the reduction cell.
Each code indexes PRIMITIVES. Edges are ordered node by node, as in the reference:

    node 0: edges 0-1    inputs c_{k-2}, c_{k-1}
    node 1: edges 2-4    inputs c_{k-2}, c_{k-1}, node 0
    node 2: edges 5-8    ...,  node 1
    node 3: edges 9-13   ...,  node 2

A candidate is valid when node j has exactly two non-`none` edges (so exactly j `none` edges).
A `Genotype` lists, per node, its two ops as (op_name, input_index) with input 0 = c_{k-2},
1 = c_{k-1}, 2 + i = node i.

This module is a leaf: it imports nothing from the project.
"""
import json
import operator
import os
from collections import namedtuple

Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')

PRIMITIVES = [
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
]

STEPS = 4                      # intermediate nodes per cell
EDGES_PER_CELL = 14            # 2 + 3 + 4 + 5
CANDIDATE_LEN = 2 * EDGES_PER_CELL
NODE_SLICES = [(0, 2), (2, 5), (5, 9), (9, 14)]   # [start, end) edge index of each node
# Ops only the fixed (retrain) networks know; NASNet and AmoebaNet use them.
EXTRA_OPS = ['sep_conv_7x7', 'conv_7x1_1x7']


class GenotypeError(ValueError):
    """A candidate, genotype, genotype file or genotype name is not usable; the message says why."""


def edge_input(edge):
    """Input index (0 = c_{k-2}, 1 = c_{k-1}, 2 + i = node i) of edge `edge` (0..13)."""
    for start, end in NODE_SLICES:
        if start <= edge < end:
            return edge - start
    raise GenotypeError(f'edge index {edge} out of range 0..{EDGES_PER_CELL - 1}')


def _as_codes(candidate):
    # Only whole numbers are op codes: int() would turn 3.7 into 3 and read "abc" or NaN as a traceback.
    if isinstance(candidate, (str, bytes, dict)) or not hasattr(candidate, '__iter__'):
        raise GenotypeError(f'a candidate is a list of {CANDIDATE_LEN} integer op codes, got {candidate!r}')
    try:
        codes = [operator.index(c) for c in candidate]
    except TypeError:
        raise GenotypeError(f'a candidate is a list of {CANDIDATE_LEN} integer op codes, got {list(candidate)!r}') \
            from None
    if len(codes) != CANDIDATE_LEN:
        raise GenotypeError(f'a candidate has {CANDIDATE_LEN} op codes (14 normal + 14 reduce), got {len(codes)}')
    bad = [c for c in codes if not 0 <= c < len(PRIMITIVES)]
    if bad:
        raise GenotypeError(f'op codes must lie in 0..{len(PRIMITIVES) - 1} ({", ".join(PRIMITIVES)}), got {bad}')
    return codes


def cell_problems(cell_codes):
    """Reasons why a 14-edge half is not valid (empty list when it is)."""
    problems = []
    for node, (start, end) in enumerate(NODE_SLICES):
        kept = sum(1 for c in cell_codes[start:end] if c != 0)
        if kept != 2:
            problems.append(f'node {node} (edges {start}-{end - 1}) has {kept} non-none edges, needs exactly 2')
    return problems


def is_valid(candidate):
    """True when every node of both cells has exactly two non-`none` incoming edges."""
    try:
        codes = _as_codes(candidate)
    except GenotypeError:
        return False
    return not cell_problems(codes[:EDGES_PER_CELL]) and not cell_problems(codes[EDGES_PER_CELL:])


def check_valid(candidate):
    """Return the candidate as a list of ints or raise GenotypeError naming every problem."""
    codes = _as_codes(candidate)
    problems = [f'normal cell: {p}' for p in cell_problems(codes[:EDGES_PER_CELL])]
    problems += [f'reduce cell: {p}' for p in cell_problems(codes[EDGES_PER_CELL:])]
    if problems:
        raise GenotypeError('invalid candidate ' + ','.join(map(str, codes)) + ': ' + '; '.join(problems))
    return codes


def repair_cell(cell_codes, rng):
    """The reference's 'check_cand' on one 14-edge half, in place: node j ends with exactly j `none` edges.

    Too few `none` edges: randomly chosen non-none edges become `none`. Too many: randomly chosen
    `none` edges get a uniformly random op from 1..7. `rng` is a `random.Random`.
    """
    for node, (start, end) in enumerate(NODE_SLICES):
        edges = list(range(start, end))
        nones = [e for e in edges if cell_codes[e] == 0]
        while len(nones) < node:
            e = rng.choice([e for e in edges if cell_codes[e] != 0])
            cell_codes[e] = 0
            nones.append(e)
        while len(nones) > node:
            e = rng.choice(nones)
            cell_codes[e] = rng.randint(1, len(PRIMITIVES) - 1)
            nones.remove(e)
    return cell_codes


def repair(candidate, rng):
    """Repair both halves of a 28-int candidate (a new list is returned)."""
    codes = _as_codes(candidate)
    return repair_cell(codes[:EDGES_PER_CELL], rng) + repair_cell(codes[EDGES_PER_CELL:], rng)


def random_candidate(rng):
    """Uniform codes 0..7 on all 28 edges, then repaired: the SPOS path sampler."""
    return repair([rng.randint(0, len(PRIMITIVES) - 1) for _ in range(CANDIDATE_LEN)], rng)


def _decode_cell(cell_codes):
    ops = []
    for start, end in NODE_SLICES:
        for e in range(start, end):
            if cell_codes[e] != 0:
                ops.append((PRIMITIVES[cell_codes[e]], e - start))
    return ops


def decode(candidate):
    """28-int valid candidate -> Genotype (ops of each node in edge order)."""
    codes = check_valid(candidate)
    concat = list(range(2, 2 + STEPS))
    return Genotype(normal=_decode_cell(codes[:EDGES_PER_CELL]), normal_concat=concat,
                    reduce=_decode_cell(codes[EDGES_PER_CELL:]), reduce_concat=list(concat))


def _encode_cell(ops, concat, which):
    if len(ops) != 2 * STEPS or list(concat) != list(range(2, 2 + STEPS)):
        raise GenotypeError(f'{which} cell has {len(ops) // 2} nodes / concat {list(concat)}: only 4-node cells '
                            'with concat [2, 3, 4, 5] are in the 28-int search space')
    codes = [0] * EDGES_PER_CELL
    for node, (start, end) in enumerate(NODE_SLICES):
        for op, inp in ops[2 * node:2 * node + 2]:
            if op not in PRIMITIVES or op == 'none':
                raise GenotypeError(f'{which} cell node {node}: op {op!r} is not a search-space primitive')
            if not 0 <= inp < end - start:
                raise GenotypeError(f'{which} cell node {node}: input {inp} out of range 0..{end - start - 1}')
            if codes[start + inp] != 0:
                raise GenotypeError(f'{which} cell node {node} takes input {inp} twice: not a 28-int candidate')
            codes[start + inp] = PRIMITIVES.index(op)
    return codes


def encode(genotype):
    """Genotype -> 28 ints; GenotypeError when the genotype lies outside the 28-int space."""
    return (_encode_cell(genotype.normal, genotype.normal_concat, 'normal')
            + _encode_cell(genotype.reduce, genotype.reduce_concat, 'reduce'))


def try_encode(genotype):
    """encode(genotype), or None for genotypes outside the search space (NASNet, AmoebaNet, ...)."""
    try:
        return encode(genotype)
    except GenotypeError:
        return None


def parse_candidate(text):
    """'3,6,0 4 ...' (commas and/or spaces) -> validated list of 28 ints."""
    parts = text.replace(',', ' ').split()
    try:
        codes = [int(p) for p in parts]
    except ValueError:
        raise GenotypeError(f'a candidate is 28 integers separated by commas or spaces, got {text.strip()!r}')
    return check_valid(codes)



# Published cells, as the reference ships them.

AmoebaNet = Genotype(
    normal=[
        ('avg_pool_3x3', 0), ('max_pool_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_5x5', 2),
        ('sep_conv_3x3', 0), ('avg_pool_3x3', 3),
        ('sep_conv_3x3', 1), ('skip_connect', 1),
        ('skip_connect', 0), ('avg_pool_3x3', 1),
    ],
    normal_concat=[4, 5, 6],
    reduce=[
        ('avg_pool_3x3', 0), ('sep_conv_3x3', 1),
        ('max_pool_3x3', 0), ('sep_conv_7x7', 2),
        ('sep_conv_7x7', 0), ('avg_pool_3x3', 1),
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5),
    ],
    reduce_concat=[3, 4, 6],
)

DARTS_V1_CIFAR10 = Genotype(
    normal=[
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('skip_connect', 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 0),
        ('max_pool_3x3', 0), ('skip_connect', 2),
        ('skip_connect', 2), ('avg_pool_3x3', 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V1_CIFAR100 = Genotype(
    normal=[
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('skip_connect', 0), ('skip_connect', 1),
        ('skip_connect', 0), ('skip_connect', 1),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('avg_pool_3x3', 0), ('avg_pool_3x3', 1),
        ('avg_pool_3x3', 0), ('skip_connect', 2),
        ('skip_connect', 2), ('avg_pool_3x3', 0),
        ('skip_connect', 2), ('avg_pool_3x3', 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V2_CIFAR10 = Genotype(
    normal=[
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('skip_connect', 0),
        ('skip_connect', 0), ('dil_conv_3x3', 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 1),
        ('max_pool_3x3', 0), ('skip_connect', 2),
        ('skip_connect', 2), ('max_pool_3x3', 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)

DROPNAS = Genotype(
    normal=[
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('max_pool_3x3', 2),
        ('sep_conv_3x3', 1), ('sep_conv_5x5', 2),
        ('sep_conv_5x5', 0), ('sep_conv_5x5', 1),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('dil_conv_5x5', 2), ('sep_conv_5x5', 1),
        ('dil_conv_5x5', 2), ('dil_conv_5x5', 3),
        ('dil_conv_5x5', 2), ('dil_conv_5x5', 4),
    ],
    reduce_concat=[2, 3, 4, 5],
)

GENAS_ANGLE_FLATNESS_CIFAR10 = Genotype(
    normal=[
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 4),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('dil_conv_5x5', 0), ('dil_conv_5x5', 1),
        ('avg_pool_3x3', 0), ('skip_connect', 1),
        ('sep_conv_3x3', 0), ('max_pool_3x3', 1),
        ('sep_conv_5x5', 3), ('dil_conv_3x3', 4),
    ],
    reduce_concat=[2, 3, 4, 5],
)

GENAS_ANGLE_FLATNESS_CIFAR100 = Genotype(
    normal=[
        ('skip_connect', 0), ('sep_conv_5x5', 1),
        ('max_pool_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 1), ('sep_conv_5x5', 4),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('dil_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('dil_conv_5x5', 1), ('avg_pool_3x3', 2),
        ('max_pool_3x3', 0), ('skip_connect', 1),
        ('sep_conv_3x3', 1), ('dil_conv_5x5', 4),
    ],
    reduce_concat=[2, 3, 4, 5],
)

GENAS_FLATNESS_CIFAR10 = Genotype(
    normal=[
        ('skip_connect', 0), ('dil_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
        ('dil_conv_3x3', 1), ('dil_conv_3x3', 2),
        ('sep_conv_3x3', 3), ('skip_connect', 4),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('sep_conv_5x5', 0), ('avg_pool_3x3', 1),
        ('dil_conv_3x3', 1), ('sep_conv_3x3', 2),
        ('skip_connect', 1), ('dil_conv_3x3', 3),
        ('sep_conv_5x5', 2), ('dil_conv_5x5', 4),
    ],
    reduce_concat=[2, 3, 4, 5],
)

GENAS_FLATNESS_CIFAR100 = Genotype(
    normal=[
        ('skip_connect', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
        ('sep_conv_3x3', 2), ('sep_conv_5x5', 3),
        ('sep_conv_3x3', 1), ('dil_conv_5x5', 4),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('dil_conv_3x3', 0), ('skip_connect', 1),
        ('avg_pool_3x3', 0), ('sep_conv_5x5', 2),
        ('sep_conv_5x5', 1), ('dil_conv_5x5', 3),
        ('max_pool_3x3', 1), ('max_pool_3x3', 2),
    ],
    reduce_concat=[2, 3, 4, 5],
)

NASNet = Genotype(
    normal=[
        ('sep_conv_5x5', 1), ('sep_conv_3x3', 0),
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 0),
        ('avg_pool_3x3', 1), ('skip_connect', 0),
        ('avg_pool_3x3', 0), ('avg_pool_3x3', 0),
        ('sep_conv_3x3', 1), ('skip_connect', 1),
    ],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[
        ('sep_conv_5x5', 1), ('sep_conv_7x7', 0),
        ('max_pool_3x3', 1), ('sep_conv_7x7', 0),
        ('avg_pool_3x3', 1), ('sep_conv_5x5', 0),
        ('skip_connect', 3), ('avg_pool_3x3', 2),
        ('sep_conv_3x3', 2), ('max_pool_3x3', 1),
    ],
    reduce_concat=[4, 5, 6],
)

PCDARTS_OURS = Genotype(
    normal=[
        ('dil_conv_5x5', 1), ('dil_conv_3x3', 0),
        ('dil_conv_5x5', 1), ('max_pool_3x3', 0),
        ('dil_conv_3x3', 0), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('max_pool_3x3', 0), ('skip_connect', 2),
        ('sep_conv_5x5', 2), ('skip_connect', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 2),
    ],
    reduce_concat=[2, 3, 4, 5],
)

PCDARTS_OURS_SEARCHEPOCH40 = Genotype(
    normal=[
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_5x5', 0),
        ('sep_conv_5x5', 1), ('sep_conv_3x3', 3),
        ('sep_conv_5x5', 4), ('sep_conv_3x3', 0),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0), ('sep_conv_3x3', 1),
        ('max_pool_3x3', 0), ('skip_connect', 1),
        ('sep_conv_5x5', 2), ('sep_conv_3x3', 0),
        ('skip_connect', 0), ('dil_conv_3x3', 4),
    ],
    reduce_concat=[2, 3, 4, 5],
)

PDARTS_CIFAR10 = Genotype(
    normal=[
        ('skip_connect', 0), ('dil_conv_3x3', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 0), ('dil_conv_5x5', 4),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('avg_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 0), ('dil_conv_5x5', 2),
        ('max_pool_3x3', 0), ('dil_conv_3x3', 1),
        ('dil_conv_3x3', 1), ('dil_conv_5x5', 3),
    ],
    reduce_concat=[2, 3, 4, 5],
)

RLDARTS_OURS_GT = Genotype(
    normal=[
        ('sep_conv_5x5', 0), ('sep_conv_5x5', 1),
        ('avg_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 4),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('skip_connect', 0), ('skip_connect', 1),
        ('skip_connect', 1), ('avg_pool_3x3', 2),
        ('skip_connect', 0), ('dil_conv_5x5', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 4),
    ],
    reduce_concat=[2, 3, 4, 5],
)

SDARTS_ADV_CIFAR10 = Genotype(
    normal=[
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('skip_connect', 0),
        ('sep_conv_5x5', 0), ('dil_conv_3x3', 3),
        ('dil_conv_3x3', 4), ('skip_connect', 0),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0), ('sep_conv_5x5', 1),
        ('skip_connect', 2), ('max_pool_3x3', 0),
        ('skip_connect', 3), ('skip_connect', 2),
        ('skip_connect', 2), ('sep_conv_5x5', 4),
    ],
    reduce_concat=[2, 3, 4, 5],
)

SDARTS_RS_CIFAR10 = Genotype(
    normal=[
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
        ('sep_conv_5x5', 1), ('skip_connect', 0),
        ('sep_conv_3x3', 3), ('skip_connect', 1),
        ('sep_conv_3x3', 1), ('dil_conv_3x3', 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ('max_pool_3x3', 0), ('sep_conv_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 0),
        ('dil_conv_5x5', 3), ('max_pool_3x3', 0),
        ('sep_conv_3x3', 2), ('sep_conv_5x5', 3),
    ],
    reduce_concat=[2, 3, 4, 5],
)


# --- named genotypes (the model zoo and the published cells) --------------------------------

RLDARTS = decode([5, 4, 5, 0, 5, 0, 0, 5, 5, 0, 0, 0, 7, 4,
                  5, 4, 2, 0, 5, 0, 0, 4, 4, 0, 4, 4, 0, 0])

# Aliases, as the reference names them.
DARTS_V1 = DARTS_V1_CIFAR10
DARTS_V2 = DARTS_V2_CIFAR10
DARTS = DARTS_V2
PDARTS = PDARTS_CIFAR10
PC_DARTS = PCDARTS_OURS

# Name -> Genotype. Look names up here (`get_genotype`); never `eval` a user string.
GENOTYPES = {
    'NASNet': NASNet,
    'AmoebaNet': AmoebaNet,
    'DARTS_V1_CIFAR10': DARTS_V1_CIFAR10,
    'DARTS_V1_CIFAR100': DARTS_V1_CIFAR100,
    'DARTS_V2_CIFAR10': DARTS_V2_CIFAR10,
    'DARTS_V1': DARTS_V1,
    'DARTS_V2': DARTS_V2,
    'DARTS': DARTS,
    'PDARTS_CIFAR10': PDARTS_CIFAR10,
    'PDARTS': PDARTS,
    'PCDARTS_OURS': PCDARTS_OURS,
    'PCDARTS_OURS_SEARCHEPOCH40': PCDARTS_OURS_SEARCHEPOCH40,
    'PC_DARTS': PC_DARTS,
    'SDARTS_RS_CIFAR10': SDARTS_RS_CIFAR10,
    'SDARTS_ADV_CIFAR10': SDARTS_ADV_CIFAR10,
    'DROPNAS': DROPNAS,
    'RLDARTS': RLDARTS,
    'RLDARTS_OURS_GT': RLDARTS_OURS_GT,
    'GENAS_FLATNESS_CIFAR10': GENAS_FLATNESS_CIFAR10,
    'GENAS_ANGLE_FLATNESS_CIFAR10': GENAS_ANGLE_FLATNESS_CIFAR10,
    'GENAS_FLATNESS_CIFAR100': GENAS_FLATNESS_CIFAR100,
    'GENAS_ANGLE_FLATNESS_CIFAR100': GENAS_ANGLE_FLATNESS_CIFAR100,
}


def _normalize_name(name):
    return name.strip().upper().replace('-', '_')


def get_genotype(name):
    """Registry lookup; case and '-' vs '_' are forgiven ('pc-darts' finds PC_DARTS)."""
    if name in GENOTYPES:
        return GENOTYPES[name]
    matches = [k for k in GENOTYPES if _normalize_name(k) == _normalize_name(name)]
    if len(matches) == 1:
        return GENOTYPES[matches[0]]
    raise GenotypeError(f'unknown genotype {name!r}; known names: {", ".join(sorted(GENOTYPES))} '
                        '(or pass the path of a genotype .json file)')


def validate_genotype(genotype):
    """Check a Genotype is buildable as a fixed (retrain) cell; returns it, or raises GenotypeError."""
    known = set(PRIMITIVES[1:]) | set(EXTRA_OPS)
    for which, ops, concat in (('normal', genotype.normal, genotype.normal_concat),
                               ('reduce', genotype.reduce, genotype.reduce_concat)):
        if not ops or len(ops) % 2:
            raise GenotypeError(f'{which} cell needs two (op, input) pairs per node, got {len(ops)} pairs')
        steps = len(ops) // 2
        for k, pair in enumerate(ops):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise GenotypeError(f'{which} cell entry {k} must be [op_name, input_index], got {pair!r}')
            op, inp = pair
            if not isinstance(op, str) or op not in known:
                raise GenotypeError(f'{which} cell: unknown op {op!r}; known ops: {", ".join(sorted(known))}')
            if not isinstance(inp, int) or not 0 <= inp < 2 + k // 2:
                raise GenotypeError(f'{which} cell: node {k // 2} cannot take input {inp!r} (0..{1 + k // 2})')
        if not isinstance(concat, (list, tuple)) or not concat or any(not isinstance(c, int) or not 0 <= c < 2 + steps for c in concat):
            raise GenotypeError(f'{which}_concat {concat!r} must list node indices in 0..{1 + steps}')
    return genotype


def genotype_to_dict(genotype):
    return {'normal': [[op, int(i)] for op, i in genotype.normal], 'normal_concat': list(genotype.normal_concat),
            'reduce': [[op, int(i)] for op, i in genotype.reduce], 'reduce_concat': list(genotype.reduce_concat)}


def genotype_from_dict(d):
    try:
        cells = {k: d[k] for k in ('normal', 'normal_concat', 'reduce', 'reduce_concat')}
        if not all(isinstance(v, list) for v in cells.values()):
            raise TypeError('each of them must be a list')
        g = Genotype(normal=[tuple(p) if isinstance(p, list) else p for p in cells['normal']],
                     normal_concat=cells['normal_concat'], reduce_concat=cells['reduce_concat'],
                     reduce=[tuple(p) if isinstance(p, list) else p for p in cells['reduce']])
    except (KeyError, TypeError, ValueError) as e:
        raise GenotypeError(f'a genotype needs normal, normal_concat, reduce, reduce_concat lists ({e!r})')
    return validate_genotype(g)


def save_genotype(path, genotype, name=None, **extra):
    """Write a small JSON file: name, genotype, its 28-int candidate (or null) and any `extra` keys."""
    doc = {'name': name, 'genotype': genotype_to_dict(genotype), 'candidate': try_encode(genotype)}
    doc.update(extra)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(doc, f, indent=2)
        f.write('\n')
    os.replace(tmp, path)
    return path


# Leading bytes of binary files users pass by mistake where text is expected.
MAGIC = [(b'PK\x03\x04', 'a PyTorch checkpoint (zip archive)'), (b'\x80', 'a PyTorch checkpoint (pickle)'),
         (b'\x89PNG', 'a PNG image'), (b'%PDF', 'a PDF document'), (b'\x1f\x8b', 'a gzip archive'),
         (b'\x93NUMPY', 'a numpy array')]


def read_text_file(path, flag, expected, fix):
    """The UTF-8 text of a file given with `flag`; GenotypeError (one line) for a directory, an unreadable
    file, or a binary one, saying what it looks like ("a PyTorch checkpoint ..., not a genotype JSON")."""
    if os.path.isdir(path):
        raise GenotypeError(f'{flag} {path} is a directory, not {expected}; {fix}')
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise GenotypeError(f'cannot read {flag} {path}: {e.strerror}')
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        kind = next((what for magic, what in MAGIC if data.startswith(magic)), 'a binary file')
        raise GenotypeError(f'{flag} {path} looks like {kind}, not {expected}; {fix}') from None


def load_genotype(path):
    """Read a genotype .json (ours or the search's genotype.json). Accepts a 'genotype' dict and/or a
    28-int 'candidate'; when both are there they must agree."""
    text = read_text_file(path, '--arch', 'a genotype JSON',
                          'pass a genotype name (e.g. DARTS_V2) or the genotype.json a search wrote')
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenotypeError(f'genotype file {path} is not valid JSON ({e}); write it with genotypes.save_genotype')
    if not isinstance(doc, dict) or ('genotype' not in doc and doc.get('candidate') is None):
        raise GenotypeError(f'genotype file {path} needs a "genotype" object or a 28-int "candidate" list')
    try:
        from_candidate = decode(doc['candidate']) if doc.get('candidate') is not None else None
        genotype = genotype_from_dict(doc['genotype']) if 'genotype' in doc else from_candidate
    except GenotypeError as e:
        raise GenotypeError(f'genotype file {path}: {e}')
    if from_candidate is not None and encode(from_candidate) != try_encode(genotype):
        raise GenotypeError(f'genotype file {path}: "candidate" and "genotype" describe different cells')
    return genotype


def resolve_genotype(arch):
    """--arch value -> Genotype: a registry name, or the path of a genotype .json file."""
    if arch.endswith('.json') or os.path.sep in arch or os.path.isfile(arch):
        return load_genotype(arch)
    return get_genotype(arch)
