"""Which cells a study uses: a seeded uniform sample of valid candidates, a --candidates file, or named
genotypes (--arch), in that order, without duplicates."""
import random
from dataclasses import dataclass
from pathlib import Path

import genotypes
from utils import UserError

MIN_CELLS = 3           # Kendall's tau and a bootstrap need at least three cells


@dataclass(frozen=True)
class Cell:
    name: str               # 'sample 3', 'line 7 of cands.txt', or the genotype name
    candidate: tuple        # the 28 op codes


def uniform_candidate(rng):
    """A candidate drawn uniformly from the valid 28-int candidates: for every node of both cells, two of
    its incoming edges uniformly (all pairs equally likely), each with an op uniform over the 7 that are
    not `none`. (The SPOS sampler `genotypes.random_candidate` repairs uniform codes instead, which
    favours some edge pairs.)"""
    codes = []
    for _ in range(2):
        for start, end in genotypes.NODE_SLICES:
            kept = set(rng.sample(range(start, end), 2))
            codes += [rng.randint(1, len(genotypes.PRIMITIVES) - 1) if e in kept else 0 for e in range(start, end)]
    return tuple(genotypes.check_valid(codes))


def sample_cells(n, seed):
    """n distinct uniform candidates from random.Random(seed); a larger n extends the same list."""
    rng, seen, cells = random.Random(seed), set(), []
    while len(cells) < n:
        cand = uniform_candidate(rng)
        if cand not in seen:
            seen.add(cand)
            cells.append(Cell(f'sample {len(cells)}', cand))
    return cells


def read_candidates_file(path):
    """One candidate per line (28 ints, commas or spaces; blank lines and # comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise UserError(f'cannot read --candidates {path}: {e.strerror}; check the path')
    cells = []
    for n, line in enumerate(lines, 1):
        text = line.split('#')[0]
        if text.strip():
            try:
                cells.append(Cell(f'line {n} of {Path(path).name}', tuple(genotypes.parse_candidate(text))))
            except genotypes.GenotypeError as e:
                raise UserError(f'--candidates {path} line {n} is not a cell of the search space ({e}); '
                                'fix or remove that line')
    return cells


def named_cells(names):
    cells = []
    for arch in names:
        cand = genotypes.try_encode(genotypes.resolve_genotype(arch))
        if cand is None:
            raise UserError(f'--arch {arch} is not in the 28-int DARTS search space (5-node cell or an op outside '
                            'the 8 primitives); leave it out')
        cells.append(Cell(arch, tuple(cand)))
    return cells


def select_cells(num_cells=0, sample_seed=0, candidates=None, arch=()):
    """The study's cells: sample, then file, then names; a candidate seen before is skipped."""
    cells = sample_cells(num_cells, sample_seed) if num_cells else []
    if candidates:
        cells += read_candidates_file(candidates)
    cells += named_cells(arch or [])
    unique, seen = [], set()
    for c in cells:
        if c.candidate not in seen:
            seen.add(c.candidate)
            unique.append(c)
    if len(unique) < MIN_CELLS:
        raise UserError(f'the study has {len(unique)} distinct cell(s); a rank correlation needs at least '
                        f'{MIN_CELLS}: raise --num_cells or add --candidates / --arch')
    return unique


def add_cell_args(parser):
    g = parser.add_argument_group('cells (combined: sample, then file, then names)')
    g.add_argument('--num_cells', type=int, default=0, help='N cells drawn uniformly from the valid candidates')
    g.add_argument('--sample_seed', type=int, default=0, help='seed of that sample (a larger N extends it)')
    g.add_argument('--candidates', default=None, help='file of 28-int candidates, one per line')
    g.add_argument('--arch', action='append', default=None, help='named genotype or genotype .json (repeatable)')
    return g
