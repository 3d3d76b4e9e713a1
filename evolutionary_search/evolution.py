"""SPOS-style evolutionary search over the candidates of a search space, as the reference's.

Generation g: score every candidate of the population; merge it into the elitist top lists (the
select_num parents, and the best `keep` for the report); then propose generation g + 1: mutations of
random parents (each edge re-drawn with probability m_prob, then repaired: all 28 in DARTS, all 6 in
NB201), crossovers of two random parents (each edge from either, then repaired), and random candidates
for the rest. The space (spaces.get_space) supplies sampling, mutation and crossover.
A candidate is never proposed, and so never scored, twice.

With a cost budget (budget.Budget: --flops_limit / --params_limit) a candidate over a limit is never proposed,
so never scored nor kept; every candidate's cost is measured once (`costs`, the cache, saved with the state) and
recorded with its score. Random filling, mutation and crossover make a bounded number of tries.

Proposing uses only `self.rng`; scoring uses none of it, so the whole state (JSON-serializable) can be
saved after every scored candidate and a resumed search continues exactly.
"""
import math
import random

from spaces import get_space
from utils import UserError, logger

TRIES = 10          # proposals tried per wanted mutation, crossover or random candidate


def cand_key(candidate):
    return ','.join(str(int(c)) for c in candidate)


def key_cand(key):
    return [int(c) for c in key.split(',')]


class Evolution:
    def __init__(self, max_epochs=20, population_num=50, select_num=10, mutation_num=25, crossover_num=25,
                 m_prob=0.1, seed=0, keep=50, space=None, budget=None):
        self.space = get_space(None) if space is None else space
        self.budget = budget                # budget.Budget or None
        self.max_epochs, self.population_num, self.select_num = max_epochs, population_num, select_num
        self.mutation_num, self.crossover_num, self.m_prob, self.keep = mutation_num, crossover_num, m_prob, keep
        self.rng = random.Random(seed)
        self.generation = 0                 # index of the population being scored
        self.population = []                # keys of this generation's candidates
        self.scores = {}                    # key -> {'score': ..., components}, every scored candidate
        self.top_k, self.top_keep = [], []  # keys, best first
        self.history = []                   # one summary per finished generation
        self.done = False
        self.costs = {}                     # key -> budget cost ({'macs', 'params'}) of every candidate measured
        self.over_budget = 0                # proposals for this generation refused for their cost

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self):
        version, internal, gauss = self.rng.getstate()
        return {'generation': self.generation, 'population': self.population, 'scores': self.scores,
                'top_k': self.top_k, 'top_keep': self.top_keep, 'history': self.history, 'done': self.done,
                'costs': self.costs, 'over_budget': self.over_budget, 'rng': [version, list(internal), gauss]}

    def load_state_dict(self, state):
        for k in ('generation', 'population', 'scores', 'top_k', 'top_keep', 'history', 'done'):
            setattr(self, k, state[k])
        self.costs, self.over_budget = state.get('costs', {}), state.get('over_budget', 0)   # older states: none
        version, internal, gauss = state['rng']
        self.rng.setstate((version, tuple(internal), gauss))
        if self.done and self.generation + 1 < self.max_epochs:   # --max_epochs raised: go on
            self.done = False
            self._propose_next()

    # --- proposing -----------------------------------------------------------------------------
    def _seen(self, key):
        return key in self.scores or key in self.population

    def cost(self, cand):
        """The candidate's cost on the budget network, measured once."""
        key = cand_key(cand)
        if key not in self.costs:
            self.costs[key] = self.budget.measure(cand)
        return self.costs[key]

    def _add_if_new(self, cand, into):
        key = cand_key(cand)
        if self._seen(key) or key in into:
            return False
        if self.budget is not None and self.budget.excess(self.cost(cand)):
            self.over_budget += 1
            return False
        into.append(key)
        return True

    def _fill_random(self, into):
        tries = self.population_num * TRIES
        while len(into) < self.population_num and tries > 0:
            tries -= 1
            self._add_if_new(self.space.random_candidate(self.rng), into)

    def _mutations(self, into):
        made, tries = 0, self.mutation_num * TRIES
        while made < self.mutation_num and tries > 0:
            tries -= 1
            cand = self.space.mutate(key_cand(self.rng.choice(self.top_k)), self.rng, self.m_prob)
            made += self._add_if_new(cand, into)

    def _crossovers(self, into):
        made, tries = 0, self.crossover_num * TRIES
        while made < self.crossover_num and tries > 0:
            tries -= 1
            p1, p2 = key_cand(self.rng.choice(self.top_k)), key_cand(self.rng.choice(self.top_k))
            made += self._add_if_new(self.space.crossover(p1, p2, self.rng), into)

    def start(self):
        """Propose the first (random) population, unless a loaded state already has one."""
        if not self.population and not self.scores:
            new = []
            self._fill_random(new)
            if not new:
                raise UserError(f'none of {self.population_num * TRIES} random candidates is within the cost limits '
                                f'({self.over_budget} over them); raise --flops_limit / --params_limit')
            self.population = new

    def _propose_next(self):
        new = []
        self.over_budget = 0
        self._mutations(new)
        self._crossovers(new)
        self._fill_random(new)
        if not new:      # every proposal seen before or over a limit: nothing left to score
            logger.warning('no new candidate within the limits after %d generations: the search ends here',
                           self.generation + 1)
            self.done = True
            return
        self.generation += 1
        self.population = new

    # --- scoring and selection -----------------------------------------------------------------
    def pending(self):
        """Candidates of this generation not scored yet, in proposal order."""
        return [key_cand(k) for k in self.population if k not in self.scores]

    def record(self, candidate, info):
        """Keep a candidate's score (and, under a budget, its cost)."""
        key = cand_key(candidate)
        score = info.get('score')
        # A NaN compares false with everything, an inf above everything: neither may rank.
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise UserError(f'candidate {key} scored {score}: a score that is not a finite number cannot be '
                            'ranked; the supernet or the scoring flags make the metric diverge (check the '
                            'checkpoint and --wlm_weight / --acc_weight / --stds)')
        self.scores[key] = {**info, 'cost': self.costs[key]} if key in self.costs else info

    def _merge_top(self, top, k):
        merged = top + [key for key in self.population if key not in top]
        merged.sort(key=lambda key: self.scores[key]['score'], reverse=True)   # stable: older first on ties
        return merged[:k]

    def finish_generation(self):
        """Merge the scored population into the top lists, summarize, propose the next generation.
        Returns the summary of the finished generation."""
        assert not self.pending(), 'score the whole population first'
        self.top_k = self._merge_top(self.top_k, self.select_num)
        self.top_keep = self._merge_top(self.top_keep, self.keep)
        pop_scores = [self.scores[k]['score'] for k in self.population]
        summary = {'generation': self.generation + 1, 'scored': len(self.scores),
                   'best_score': self.scores[self.top_k[0]]['score'],
                   'mean_score': sum(pop_scores) / len(pop_scores),
                   **({'over_budget': self.over_budget} if self.budget is not None else {}),
                   'top_k': [{'candidate': key_cand(k), **self.scores[k]} for k in self.top_k]}
        self.history.append(summary)
        if self.generation + 1 >= self.max_epochs:
            self.done = True
        else:
            self._propose_next()
        return summary

    def best(self, n=1):
        """The n best candidates so far with their scores: [(candidate, info)]."""
        return [(key_cand(k), self.scores[k]) for k in self.top_keep[:n]]
