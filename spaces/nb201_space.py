"""The NAS-Bench-201 space behind the SearchSpace interface (spaces/nb201.py, spaces/nb201_model.py)."""
import json
import os

from genotypes import GenotypeError
from spaces import nb201
from spaces.base import SearchSpace
from spaces.nb201_model import NB201Network, NB201Supernet, angle_vector
from utils import atomic_write_text


class NB201Space(SearchSpace):
    """6 ints, one op code per edge; all 15,625 cells are valid, so nothing is repaired."""
    name = 'nb201'
    candidate_len = nb201.NUM_EDGES
    default_layers = 5
    layers_meaning = 'cells per stage (N; the benchmark: 5)'

    def random_candidate(self, rng):
        return nb201.random_candidate(rng)

    def uniform_sample(self, n, seed):
        return nb201.sample_candidates(n, seed)

    def mutate(self, candidate, rng, m_prob):
        return nb201.mutate(candidate, rng, m_prob)

    def crossover(self, a, b, rng):
        return nb201.crossover(a, b, rng)

    def check(self, candidate):
        return nb201.check_candidate(candidate)

    def parse(self, text):
        return nb201.parse(text)

    def resolve_arch(self, arch):
        """An arch string, 6 ints, or a result file of an NB201 search (its "candidate")."""
        if arch.endswith('.json') and os.path.isfile(arch):
            try:
                with open(arch) as f:
                    doc = json.load(f)
                return nb201.check_candidate(doc['candidate'])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise GenotypeError(f'--arch {arch}: not the genotype.json of an NB201 search ({e})')
        try:
            return nb201.parse(arch)
        except GenotypeError as e:
            raise GenotypeError(f'--arch {arch} is not an NB201 cell: pass an arch string such as '
                                f'{nb201.to_arch_string([3] * nb201.NUM_EDGES)!r}, 6 op codes, or the genotype.json '
                                f'of an NB201 search ({e})')

    def decode(self, candidate):
        return nb201.to_arch_string(candidate)

    def encode(self, readable):
        return nb201.from_arch_string(readable)

    def to_string(self, candidate):
        return nb201.to_arch_string(candidate)

    def describe(self, candidate):
        return {'arch': nb201.to_arch_string(candidate)}

    def save_result(self, path, candidate, name, **extra):
        doc = {'space': self.name, 'name': name, 'arch': nb201.to_arch_string(candidate),
               'candidate': nb201.check_candidate(candidate), **extra}
        return atomic_write_text(path, json.dumps(doc, indent=2) + '\n')

    def check_shape(self, init_channels, layers):
        return super().check_shape(init_channels, layers) + [(layers >= 1, '--layers (cells per stage) must be >= 1')]

    def build_supernet(self, C, num_classes, layers):
        return NB201Supernet(C, num_classes, layers)

    def forward_args(self, candidate):
        return (candidate,)

    def angle_vector(self, model, candidate):
        return angle_vector(model, candidate)

    def standalone(self, candidate, C, num_classes, layers, auxiliary=False):
        if auxiliary:
            raise GenotypeError('NAS-Bench-201 networks have no auxiliary head; leave --auxiliary off')
        return NB201Network(candidate, C, num_classes, layers)

    budget_shapes = {'cifar': (16, 5)}     # the benchmark's network (C=16, N=5); no ImageNet-size network

    def cheapest_candidate(self):
        return [nb201.OPS.index('none')] * nb201.NUM_EDGES      # no op: no weights, no multiply-adds

    def budget_network(self, kind, candidate, C, num_classes, layers):
        return self.standalone(candidate, C, num_classes, layers)
