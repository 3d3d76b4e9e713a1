"""Running a search or scoring given cells, in one process or spread over torchrun ranks.

Candidates are scored in rounds of world_size, one per rank; every rank receives every score (a
score is a pure function of candidate, seed, checkpoints and data, so it does not matter which rank
computes it). Rank 0 alone runs the evolution step, writes the search checkpoint after every round
and writes the outputs; the other ranks receive its state.
"""
import json
import math
import os
import random
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

from evolutionary_search.evolution import cand_key
from evolutionary_search.metrics import METRICS, formula
from evolutionary_search.plots import write_search_plots
from inputs import check_keys, json_document
from utils import UserError, append_line, atomic_write_text, changed_flags, logger, progress, write_guard

CHECKPOINT = 'search_checkpoint.json'
# What a checkpoint lacks that was written before a flag existed: the value that older version used.
LEGACY_FLAGS = {'bn_images': 'shared', 'flops_limit': None, 'params_limit': None, 'budget_network': 'imagenet',
                'budget_channels': None, 'budget_layers': None}


class SearchResult(NamedTuple):
    path: Path           # genotype.json
    candidate: list      # the best candidate
    info: dict           # its score and components


def score_in_rounds(ctx, scorer, candidates, dist):
    """Yield (candidate, info) in order. A UserError on any rank (a NaN loss, say) is raised on all."""
    for start in range(0, len(candidates), dist.world_size):
        chunk = candidates[start:start + dist.world_size]
        mine = None
        if dist.rank < len(chunk):
            try:
                mine = scorer(ctx, chunk[dist.rank])
            except UserError as e:
                mine = {'error': str(e)}
        infos = dist.all_gather_object(mine)[:len(chunk)]
        errors = [i['error'] for i in infos if 'error' in i]
        if errors:
            raise UserError(errors[0])
        yield from zip(chunk, infos)


def format_components(info):
    """The float components, and the cost on the budget network when there is one."""
    text = ' '.join(f'{k} {v:.6g}' for k, v in info.items() if isinstance(v, float))
    if 'cost' in info:
        text += f' (multiply-adds {info["cost"]["macs"] / 1e6:.1f}M, params {info["cost"]["params"] / 1e6:.3f}M)'
    return text


def score_given(ctx, args, run, todo, dist):
    """Score (name, candidate) pairs; rank 0 prints one JSON line each and appends it to scores.jsonl."""
    results = []
    bar = progress(score_in_rounds(ctx, METRICS[args.metric], [c for _, c in todo], dist), is_main=dist.is_main,
                   total=len(todo), desc='scoring')
    for (name, _), (cand, info) in zip(todo, bar):
        record = {'name': name, 'candidate': cand, 'metric': args.metric, **info}
        if dist.is_main:
            line = json.dumps(record)
            print(line, flush=True)
            append_line(run.path / 'scores.jsonl', line)
            logger.info('%s score %.6g %s', record['name'], record['score'], format_components(record))
        results.append(record)
    return results


def save_search(run, evo, args, flags):
    """The search checkpoint: the score-relevant flags, the device type the scores come from, the evolution."""
    atomic_write_text(run.path / CHECKPOINT, json.dumps({'args': {k: getattr(args, k) for k in flags},
                                                         'device': args.device_type, 'evolution': evo.state_dict()}))


def check_device(path, saved, current):
    """Scores depend on the device type (a GPU draws the weight noise from a CUDA generator, and its kernels
    round differently): a search is continued only on the kind of device it started on. Checkpoints written
    before the device was recorded (saved None) are not checked."""
    if saved is not None and saved != current:
        raise UserError(f'{path} was scored on {saved} and this run scores on {current}, which gives other scores; '
                        f'resume it with --device {saved}, or --restart to start over on {current}')


# What Evolution.load_state_dict reads from a saved state, and of what type.
STATE_KEYS = {'generation': int, 'population': list, 'scores': dict, 'top_k': list, 'top_keep': list,
              'history': list, 'done': bool, 'rng': list}
WHAT = 'a search checkpoint (search_checkpoint.json)'


def check_state(flag, path, state):
    """The evolution entry holds what load_state_dict needs, each candidate key a list of op codes and each
    score a finite number; UserError otherwise."""
    check_keys(flag, path, state, STATE_KEYS, WHAT)
    keys = [*state['population'], *state['top_k'], *state['top_keep'], *state['scores']]
    scores = [info.get('score') if isinstance(info, dict) else None for info in state['scores'].values()]
    rng = state['rng']
    ok = (all(isinstance(k, str) and all(c.strip().isdigit() for c in k.split(',')) for k in keys)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scores)
          and all(k in state['scores'] for k in state['top_k'] + state['top_keep'])
          and len(rng) == 3 and isinstance(rng[0], int) and isinstance(rng[1], list)
          and all(isinstance(x, int) for x in rng[1]))
    if not ok:
        raise UserError(f'{flag} {path} is not {WHAT}: its "evolution" entry holds candidates, scores or a random '
                        'state of the wrong form')
    try:
        random.Random().setstate((rng[0], tuple(rng[1]), rng[2]))
    except (TypeError, ValueError):
        raise UserError(f'{flag} {path} is not {WHAT}: its random state is not one') from None
    return state


def read_search(path, args, flags):
    """The evolution state of a search checkpoint written with the same score-relevant flags."""
    flag = '--resume' if args.resume else 'the search checkpoint'
    try:
        doc = json_document(flag, path, {'args': dict, 'evolution': dict}, WHAT)
        saved, state = doc['args'], check_state(flag, path, doc['evolution'])
    except UserError as e:
        raise UserError(f'{e}; or start over with --restart') from None
    check_device(path, doc.get('device'), args.device_type)
    # Flags added after a checkpoint was written are absent from it: compare with what the older version did.
    legacy = {**LEGACY_FLAGS,
              'split': 'none' if saved.get('split_data') == 0 else 'file' if saved.get('split_file') else 'seeded'}
    changed = changed_flags(saved, {k: getattr(args, k) for k in flags}, fallback=legacy)
    if changed:
        raise UserError(f'{path} was written with other flags ({"; ".join(changed)}); use the original flags, '
                        'or --restart to start over')
    return state


def log_generation(run, summary, metric):
    best = summary['top_k'][0]
    logger.info('generation %d: best %.6g mean %.6g (%d scored) best %s %s', summary['generation'],
                summary['best_score'], summary['mean_score'], summary['scored'], cand_key(best['candidate']),
                format_components({k: v for k, v in best.items() if k != 'candidate'}))
    run.log_metrics(summary)
    if run.tb is not None:
        run.tb.add_scalar(f'{metric}/best_score', summary['best_score'], summary['generation'])
        run.tb.add_scalar(f'{metric}/mean_score', summary['mean_score'], summary['generation'])
        run.tb.flush()


def write_genotype(run, evo, args):
    """genotype.json of the best candidate, in the search space's format (DARTS: a Genotype for stage 3); returns
    the SearchResult."""
    top = evo.best(10)
    best, info = top[0]
    path = run.path / 'genotype.json'
    with write_guard(path, f'{path}.tmp'):          # save_result writes <path>.tmp, then replaces
        evo.space.save_result(
            path, best, name=f'searched_{args.metric}', metric=args.metric, score=info['score'],
            formula=formula(args.metric, args.wlm_weight, args.acc_weight, args.stds),
            components=info, top10=[{'candidate': c, **evo.space.describe(c), **i} for c, i in top],
            checkpoints={'model_path': os.path.abspath(args.model_path),
                         'init_model_path': os.path.abspath(args.init_model_path) if args.init_model_path else None},
            args=dict(vars(args)), **({'budget': evo.budget.limits()} if evo.budget is not None else {}))
    for figure in write_search_plots(run.path, evo, args.metric):
        logger.info('wrote %s', figure)
    return SearchResult(path, best, info)


def started_state(evo):
    """Rank 0: the first population (none is proposed when a resumed state already has one); returns the state
    every rank starts from."""
    evo.start()
    return evo.state_dict()


def finished_generation_state(run, evo, args, flags):
    """Rank 0: close the generation (select, propose the next), checkpoint it and log it; returns the state every
    rank continues from."""
    summary = evo.finish_generation()
    save_search(run, evo, args, flags)
    log_generation(run, summary, args.metric)
    return evo.state_dict()


LOG_EVERY_S = 30.0       # a redirected search (no progress bar) still logs a line this often


class Progress:
    """The candidates bar, and a log line at least every LOG_EVERY_S seconds (generations can take minutes)."""

    def __init__(self, bar, clock=time.monotonic):
        self.bar, self.clock, self.last = bar, clock, clock()

    def update(self, evo):
        best = evo.scores[evo.top_k[0]]['score'] if evo.top_k else None
        self.bar.update(1)
        self.bar.set_postfix(gen=evo.generation + 1, best=best)
        if self.clock() - self.last >= LOG_EVERY_S:
            self.last = self.clock()
            logger.info('generation %d: %d candidates scored%s', evo.generation + 1, len(evo.scores),
                        '' if best is None else f', best so far {best:.6g}')


def run_search(ctx, args, run, evo, dist, flags):
    """The evolution until done (or --stop_after candidates); returns the SearchResult on rank 0 at the end, else
    None. The search checkpoint is written after every round of world_size
    candidates, at the end of a generation's scoring and when stopping."""
    scorer = METRICS[args.metric]
    evo.load_state_dict(dist.from_main(partial(started_state, evo)))
    next_generation = partial(finished_generation_state, run, evo, args, flags)
    scored_now = 0
    bar = progress(None, is_main=dist.is_main, total=args.max_epochs * args.population_num, initial=len(evo.scores),
                   desc='candidates')
    shown = Progress(bar)
    while not evo.done:
        for cand, info in score_in_rounds(ctx, scorer, evo.pending(), dist):
            evo.record(cand, info)
            scored_now += 1
            shown.update(evo)
            stopping = bool(args.stop_after) and scored_now >= args.stop_after
            round_done = scored_now % dist.world_size == 0 or not evo.pending()
            if dist.is_main and (round_done or stopping):
                save_search(run, evo, args, flags)
            if stopping:
                bar.close()
                logger.info('stopping after %d candidates as asked (--stop_after); continue with --resume %s',
                            scored_now, run.path / CHECKPOINT)
                return None
        evo.load_state_dict(dist.from_main(next_generation))
    bar.close()
    return write_genotype(run, evo, args) if dist.is_main else None
