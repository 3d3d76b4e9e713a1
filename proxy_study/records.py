"""The study's two JSON-lines files, read with one clear error per bad line.

ground_truth.jsonl, one line per (cell, training seed); a user may write it by hand from any source:
    {"candidate": [28 ints], "seed": 0, "test_acc": 0.8312}              # required
    ... "test_loss", "params", "macs", "name", "protocol": {...}          # optional
scores.jsonl, one line per (cell, metric, scoring seed), written by proxy_study/scores.py:
    {"candidate": [...], "metric": "wlm", "seed": 0, "score": 0.0123, <the metric's components>}
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils import UserError

GT_EXAMPLE = '{"candidate": [3, 6, 0, ...], "seed": 0, "test_acc": 0.83}'
SCORE_EXAMPLE = '{"candidate": [3, 6, 0, ...], "metric": "wlm", "seed": 0, "score": 0.01}'


def read_jsonl(path, what):
    """[(line number, dict)] of a JSON-lines file; blank lines skipped, anything else must be an object."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f'cannot read the {what} file {path}: {e.strerror}; check the path')
    except UnicodeDecodeError:
        raise UserError(f'{path} is a binary file, not a {what} file of JSON lines; pass the {what} file') from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise UserError(f'{path} line {n} is not valid JSON ({e.msg}); fix or delete that line')
        if not isinstance(rec, dict):
            raise UserError(f'{path} line {n} is not a JSON object; fix or delete that line')
        out.append((n, rec))
    return out


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


KINDS = {'candidate': 'a list of ints', 'seed': 'an int', 'metric': 'a string'}    # anything else: a number


def _fits(name, v):
    if name == 'candidate':
        return isinstance(v, list) and bool(v) and all(isinstance(c, int) and not isinstance(c, bool) for c in v)
    if name == 'seed':
        return isinstance(v, int) and not isinstance(v, bool)
    if name == 'metric':
        return isinstance(v, str)
    if name == 'score':        # may be infinite (NASWOT of a singular kernel), still ranks
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    return _is_number(v)


def check_record(path, n, rec, fields, example):
    """UserError naming the first of `fields` that is missing or of the wrong kind."""
    for f in fields:
        if not _fits(f, rec.get(f)):
            raise UserError(f'{path} line {n}: field "{f}" is missing or not {KINDS.get(f, "a finite number")} '
                            f'(a line looks like {example}); fix that line')


@dataclass
class GroundTruth:
    cells: list                     # candidate tuples, in file order
    seeds: list                     # training seeds present for every cell
    acc: np.ndarray                 # (cells, seeds) test accuracy
    names: dict = field(default_factory=dict)        # candidate -> name, where given
    protocol: dict = None           # of the first line, where given

    @property
    def mean(self):
        return self.acc.mean(axis=1)


def read_ground_truth(path):
    """A GroundTruth; every cell must have a line for the same set of seeds, one line per (cell, seed)."""
    per_cell, names, protocol = {}, {}, None
    for n, rec in read_jsonl(path, 'ground-truth'):
        check_record(path, n, rec, ('candidate', 'seed', 'test_acc'), GT_EXAMPLE)
        cand = tuple(rec['candidate'])
        seeds = per_cell.setdefault(cand, {})
        if rec['seed'] in seeds:
            raise UserError(f'{path} line {n} repeats seed {rec["seed"]} of candidate {list(cand)}; keep one line '
                            'per (candidate, seed)')
        seeds[rec['seed']] = float(rec['test_acc'])
        names.setdefault(cand, rec.get('name'))
        if rec.get('protocol') is not None and not isinstance(rec['protocol'], dict):
            raise UserError(f'{path} line {n}: "protocol" must be an object (dataset, init_channels, ...); fix that '
                            'line')
        protocol = protocol or rec.get('protocol')
    if not per_cell:
        raise UserError(f'{path} holds no ground-truth lines; each line looks like {GT_EXAMPLE}')
    seed_sets = {tuple(sorted(s)) for s in per_cell.values()}
    if len(seed_sets) > 1:
        a, b = sorted(seed_sets)[:2]
        raise UserError(f'{path}: cells were trained with different seeds ({list(a)} vs {list(b)}); give every '
                        'candidate the same seeds (finish the ground-truth run)')
    seeds = list(seed_sets.pop())
    cells = list(per_cell)
    acc = np.array([[per_cell[c][s] for s in seeds] for c in cells], float)
    return GroundTruth(cells, seeds, acc, {c: v for c, v in names.items() if v}, protocol)


def read_scores(path):
    """{metric: {candidate: {seed: score}}} of a scores file."""
    out = {}
    for n, rec in read_jsonl(path, 'scores'):
        check_record(path, n, rec, ('candidate', 'metric', 'seed', 'score'), SCORE_EXAMPLE)
        out.setdefault(rec['metric'], {}).setdefault(tuple(rec['candidate']), {})[rec['seed']] = float(rec['score'])
    return out
