"""Search spaces. Stages select one with `--space` and talk to it only through `SearchSpace`
(spaces/base.py): sampling, mutation, crossover, encoding and readable forms, the supernet, the angle
vector and the stand-alone network.

    space = get_space('nb201')
    cand = space.random_candidate(random.Random(0))
    net = space.build_supernet(C=16, num_classes=10, layers=5)

- `darts`: the DARTS space of the reference (genotypes.py, operations.py; spaces/darts.py, the supernet in
  spaces/darts_supernet.py, stage 3's networks in spaces/darts_network.py).
- `nb201`: NAS-Bench-201 (spaces/nb201.py, spaces/nb201_model.py; ground truth in spaces/nb201_bench.py).

The supernet contract every space's supernet follows is spaces/supernet.py.
"""
SPACE_NAMES = ('darts', 'nb201')
DEFAULT_SPACE = 'darts'    # what the reference searches; also the space of checkpoints that record none
_CACHE = {}


def get_space(name=None):
    """The SearchSpace called `name` (None: DEFAULT_SPACE), one instance per name. Imported lazily: a space's
    modules load only when it is used."""
    name = name or DEFAULT_SPACE
    if name not in SPACE_NAMES:
        from genotypes import GenotypeError
        raise GenotypeError(f'unknown search space {name!r}; choose one of {", ".join(SPACE_NAMES)}')
    if name not in _CACHE:
        if name == 'darts':
            from spaces.darts import DartsSpace as cls
        else:
            from spaces.nb201_space import NB201Space as cls
        _CACHE[name] = cls()
    return _CACHE[name]
