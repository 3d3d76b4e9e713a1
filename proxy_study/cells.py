"""Which cells a study uses: a seeded uniform sample of valid candidates, a --candidates file, or named
cells (--arch), in that order, without duplicates; in the DARTS space (default) or another search space."""
from dataclasses import dataclass
from pathlib import Path

from genotypes import GenotypeError
from spaces import get_space
from spaces.base import read_candidates_file
from utils import UserError

MIN_CELLS = 3           # Kendall's tau and a bootstrap need at least three cells


@dataclass(frozen=True)
class Cell:
    name: str               # 'sample 3', 'line 7 of cands.txt', or the genotype name
    candidate: tuple        # the op codes (28 for DARTS, 6 for NB201)


def sample_cells(n, seed, space):
    """n distinct candidates drawn uniformly from the valid ones of `space`, seeded."""
    return [Cell(f'sample {i}', tuple(c)) for i, c in enumerate(space.uniform_sample(n, seed))]


def file_cells(path, space):
    """The cells of a --candidates file (spaces.base.read_candidates_file), named by their line."""
    return [Cell(f'line {c.line} of {Path(path).name}', tuple(c.candidate)) for c in read_candidates_file(path, space)]


def named_cells(names, space):
    """--arch values: DARTS named genotypes or genotype .json files; NB201 arch strings or 6 ints."""
    cells = []
    for arch in names:
        try:
            cells.append(Cell(arch, tuple(space.resolve_arch(arch))))
        except GenotypeError as e:
            raise UserError(f'{e}; leave it out')
    return cells


def select_cells(num_cells=0, sample_seed=0, candidates=None, arch=(), space=None):
    """The study's cells: sample, then file, then names; a candidate seen before is skipped. `space`: None, the
    default space."""
    space = get_space(None) if space is None else space
    cells = sample_cells(num_cells, sample_seed, space) if num_cells else []
    if candidates:
        cells += file_cells(candidates, space)
    cells += named_cells(arch or [], space)
    unique, seen = [], set()
    for c in cells:
        if c.candidate not in seen:
            seen.add(c.candidate)
            unique.append(c)
    if len(unique) < MIN_CELLS:
        raise UserError(f'the study has {len(unique)} distinct cell(s); a rank correlation needs at least '
                        f'{MIN_CELLS}: raise --num_cells or add --candidates / --arch')
    return unique


def add_cell_args(parser, notation='28 ints (DARTS)', names='named genotype or genotype .json'):
    g = parser.add_argument_group('cells (combined: sample, then file, then names)')
    g.add_argument('--num_cells', type=int, default=0, help='N cells drawn uniformly from the valid candidates')
    g.add_argument('--sample_seed', type=int, default=0, help='seed of that sample')
    g.add_argument('--candidates', default=None, help=f'file of candidates, one per line: {notation}')
    g.add_argument('--arch', action='append', default=None, help=f'{names} (repeatable)')
    return g
