"""The interface between the stages and a search space.

A *candidate* is a flat list of ints (op codes), JSON-serializable and hashable as a string; each space
fixes its length and meaning. Stages never look inside one: they sample, mutate, cross over, show and
score candidates through these methods, and run supernets through `forward_args`.
"""
from typing import NamedTuple

from genotypes import GenotypeError, read_text_file


class SearchSpace:
    name = None
    candidate_len = None       # ints per candidate
    default_layers = None      # --layers when not given
    layers_meaning = ''        # for --help and error messages

    # --- candidates -------------------------------------------------------------------------------
    def random_candidate(self, rng):
        """The SPOS path sampler: a uniformly drawn valid candidate (`rng` a random.Random)."""
        raise NotImplementedError

    def uniform_sample(self, n, seed):
        """n distinct candidates drawn uniformly from the valid ones, seeded (the proxy study's sample: unlike
        random_candidate, every valid cell equally likely)."""
        raise NotImplementedError

    def mutate(self, candidate, rng, m_prob):
        """Each edge re-drawn with probability m_prob; always a valid candidate."""
        raise NotImplementedError

    def crossover(self, a, b, rng):
        """Each edge from either parent; always a valid candidate."""
        raise NotImplementedError

    def check(self, candidate):
        """The candidate as a list of ints, or GenotypeError naming the problem."""
        raise NotImplementedError

    def parse(self, text):
        """One line of a --candidates file -> candidate (GenotypeError when it is not one)."""
        raise NotImplementedError

    def resolve_arch(self, arch):
        """An --arch value (a name, a file or the readable form) -> candidate."""
        raise NotImplementedError

    def decode(self, candidate):
        """Candidate -> the space's readable object (DARTS: a Genotype, NB201: the arch string)."""
        raise NotImplementedError

    def encode(self, readable):
        """The inverse of decode; GenotypeError for objects outside the space."""
        raise NotImplementedError

    def to_string(self, candidate):
        """A short readable form for logs."""
        raise NotImplementedError

    def describe(self, candidate):
        """A JSON-able dict of the readable form, stored next to each candidate in search outputs."""
        raise NotImplementedError

    def save_result(self, path, candidate, name, **extra):
        """Write the search's result file for `candidate` (genotype.json); returns the path."""
        raise NotImplementedError

    # --- networks ---------------------------------------------------------------------------------
    def check_shape(self, init_channels, layers):
        """Problems with a supernet shape, as (ok, message) pairs for utils.require."""
        return [(init_channels >= 1, '--init_channels must be >= 1')]

    def build_supernet(self, C, num_classes, layers):
        """A SinglePathModel: forward(x, *forward_args(candidate)), forward_candidate, path_modules."""
        raise NotImplementedError

    def forward_args(self, candidate):
        """Positional arguments after x of the supernet's forward (what DDP must see)."""
        raise NotImplementedError

    def angle_vector(self, model, candidate):
        """The candidate's weights in `model` as one float64 vector (the angle metric)."""
        raise NotImplementedError

    def standalone(self, candidate, C, num_classes, layers, auxiliary=False):
        """The fixed network of one candidate at a supernet's width and depth (DARTS: stage 3's NetworkCIFAR,
        whose forward returns (logits, logits_aux), logits_aux None without the auxiliary head; NB201: the
        benchmark's network, which has none)."""
        raise NotImplementedError

    # --- cost budgets (evolutionary_search/budget.py) ------------------------------------------------
    budget_shapes = {}         # network kind -> default (init channels, cells) a --flops_limit is measured on

    def cheapest_candidate(self):
        """A candidate no other undercuts in multiply-adds or parameters on any budget network."""
        raise NotImplementedError

    def budget_network(self, kind, candidate, C, num_classes, layers):
        """The stage-3 network (a key of budget_shapes) of a candidate, on which its cost is counted."""
        raise NotImplementedError


def conv_bn_weights(op):
    """What an op of operations.py (`convs`, `bns`) adds to an angle vector: its conv weights in forward
    order, then each BN's weight and bias."""
    return [conv.weight for conv in op.convs] + [t for bn in op.bns for t in (bn.weight, bn.bias)]


class FileCandidate(NamedTuple):
    line: int                  # 1-based line number in the file
    candidate: list            # the space's candidate


def read_candidates_file(path, space, flag='--candidates'):
    """The candidates of a text file, one per line in the space's notation (DARTS: 28 ints, commas or spaces;
    NB201: 6 ints or an arch string); everything after a '#' is a comment, blank lines are skipped. One
    GenotypeError line naming the file, the line and the fix for an unreadable file, a line that is not a
    candidate of `space`, or a file without any candidate."""
    text = read_text_file(path, flag, 'a text file of candidates', 'pass a text file with one candidate per line')
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        cell = line.split('#')[0].strip()
        if not cell:
            continue
        try:
            found.append(FileCandidate(n, space.parse(cell)))
        except GenotypeError as e:
            raise GenotypeError(f'{flag} {path} line {n} is not a cell of the {space.name} search space ({e}); fix '
                                'or remove that line') from None
    if not found:
        raise GenotypeError(f'{flag} {path} holds no candidate (only comments or blank lines); put one candidate per '
                            'line (28 ints for DARTS; 6 ints or an arch string for NB201)')
    return found
