"""The NAS-Bench-201 cell space: 6 edges, 5 ops, 15,625 cells; encoding, sampling, mutation, crossover.

A cell has 4 nodes (node 0 the input, node 3 the output) and one edge from every earlier node to every
later one, in the benchmark's order

    edge:   0      1      2      3      4      5
    node:   1<-0   2<-0   2<-1   3<-0   3<-1   3<-2

A *candidate* is 6 ints, the op code of each edge (index into OPS). Every one of the 5^6 = 15,625
candidates is a cell of the benchmark, even those whose output is cut off from the input by `none`
edges, so there is nothing to repair. The readable form is the benchmark's arch string

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

(one `|op~input|` group per edge, nodes separated by `+`). The benchmark numbers its cells in the order
of its `meta` list of arch strings, which is not an enumeration order; `BenchmarkIndex` maps both ways.

Imports only the leaf `genotypes` (for its error type, which the CLIs turn into one `error:` line).
"""
import itertools

from genotypes import GenotypeError

OPS = ['none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3']
NODES = 4
EDGES = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]     # (to, from), the benchmark's order
NUM_EDGES = len(EDGES)
NUM_CELLS = len(OPS) ** NUM_EDGES


class NB201Error(GenotypeError):
    """A candidate, arch string or benchmark index is not an NB201 cell; the message says why."""


def check_candidate(candidate):
    """6 ints in 0..4 -> list of ints, or NB201Error."""
    try:
        codes = [int(c) for c in candidate]
    except (TypeError, ValueError):
        raise NB201Error(f'an NB201 candidate is {NUM_EDGES} integers 0..{len(OPS) - 1}, got {candidate!r}')
    if len(codes) != NUM_EDGES or any(not 0 <= c < len(OPS) for c in codes):
        raise NB201Error(f'an NB201 candidate is {NUM_EDGES} op codes in 0..{len(OPS) - 1} '
                         f'({", ".join(f"{i}={op}" for i, op in enumerate(OPS))}), got {codes}')
    return codes


def to_arch_string(candidate):
    """6 ints -> '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'."""
    codes = check_candidate(candidate)
    groups = []
    for node in range(1, NODES):
        groups.append('|' + '|'.join(f'{OPS[codes[e]]}~{src}' for e, (dst, src) in enumerate(EDGES)
                                      if dst == node) + '|')
    return '+'.join(groups)


def from_arch_string(text):
    """The benchmark's arch string -> 6 ints; NB201Error naming what is wrong."""
    nodes = text.strip().split('+')
    if len(nodes) != NODES - 1:
        raise NB201Error(f'an NB201 arch string has {NODES - 1} node groups joined by "+", got {text!r}')
    codes = []
    for node, group in enumerate(nodes, start=1):
        if not (group.startswith('|') and group.endswith('|')):
            raise NB201Error(f'node {node} of {text!r} must look like |op~input|...|')
        entries = group[1:-1].split('|')
        if len(entries) != node:
            raise NB201Error(f'node {node} of {text!r} needs {node} edges (inputs 0..{node - 1}), got {len(entries)}')
        for src, entry in enumerate(entries):
            op, _, inp = entry.partition('~')
            if op not in OPS or inp != str(src):
                raise NB201Error(f'edge {entry!r} of node {node} in {text!r}: expected op~{src} with op one of '
                                 f'{", ".join(OPS)}')
            codes.append(OPS.index(op))
    return codes


def code_number(candidate):
    """6 ints -> 0..15624 (base 5, edge 0 most significant): a compact key, not the benchmark index."""
    number = 0
    for c in check_candidate(candidate):
        number = number * len(OPS) + c
    return number


def all_candidates():
    """Every cell, in code_number order."""
    return [list(c) for c in itertools.product(range(len(OPS)), repeat=NUM_EDGES)]


def parse(text):
    """A user's cell: an arch string, or 6 ints separated by commas or spaces."""
    text = text.strip()
    if '|' in text:
        return from_arch_string(text)
    return check_candidate(text.replace(',', ' ').split())


def random_candidate(rng):
    """Uniform over the 15,625 cells (each edge uniform over the 5 ops): the SPOS path sampler."""
    return [rng.randint(0, len(OPS) - 1) for _ in range(NUM_EDGES)]


def mutate(candidate, rng, m_prob):
    """Each edge re-drawn uniformly with probability m_prob (it may draw its old op)."""
    cand = list(candidate)
    for e in range(NUM_EDGES):
        if rng.random() < m_prob:
            cand[e] = rng.randint(0, len(OPS) - 1)
    return cand


def crossover(a, b, rng):
    """Each edge from either parent with probability 1/2."""
    return [rng.choice([x, y]) for x, y in zip(a, b)]


class BenchmarkIndex:
    """Benchmark index <-> candidate, from the benchmark's list of arch strings (its `meta`, in index order)."""

    def __init__(self, arch_strings):
        self._cands = [from_arch_string(s) for s in arch_strings]
        self._index = {code_number(c): i for i, c in enumerate(self._cands)}
        if len(self._cands) != NUM_CELLS or len(self._index) != NUM_CELLS:
            raise NB201Error(f'a benchmark lists each of the {NUM_CELLS} cells once; this list has '
                             f'{len(self._cands)} entries, {len(self._index)} distinct')

    def index(self, candidate):
        return self._index[code_number(candidate)]

    def candidate(self, index):
        if not 0 <= int(index) < NUM_CELLS:
            raise NB201Error(f'benchmark index {index} out of range 0..{NUM_CELLS - 1}')
        return list(self._cands[int(index)])


def sample_candidates(n, seed):
    """n distinct cells drawn uniformly without replacement (all 15,625 when n >= 15,625), seeded."""
    import random
    cells = all_candidates()
    return cells if n >= NUM_CELLS else random.Random(seed).sample(cells, n)
