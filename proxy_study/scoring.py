"""Scoring cells by every stage-2 metric on a trained supernet, with K scoring seeds: the logic behind
proxy_study/scores.py (cells of a ground-truth file) and proxy_study/nb201.py (cells of NAS-Bench-201).

    setup = build_context(args, device, cells, source='cells.txt')     # supernet, its data split, checks
    score_cells(setup.ctx, cells, names, args, Path('runs/study/scores'))  # appends scores.jsonl, resumable

A seed changes the BN-recalibration batches, the weight noise and the stand-alone network's initial
weights; metrics that do not depend on it (angle, params, macs) are scored once. The data split is the
supernet's own (read from its checkpoint), as in stage 2.
"""
import argparse
import dataclasses
import json
import time

from evolutionary_search.context import add_scoring_args as add_stage2_scoring_args
from evolutionary_search.context import build_context as build_scoring
from evolutionary_search.context import check_scoring_args
from evolutionary_search.metrics import DETERMINISTIC, METRICS, ScoringContext
from genotypes import GenotypeError
from inputs import json_document
from proxy_study.records import read_jsonl
from utils import UserError, append_line, atomic_write_text, changed_flags, logger, require, setup_logging

OUTPUT, SETTINGS = 'scores.jsonl', 'settings.json'
# Flags that change scores: fixed for a run directory.
SCORE_FLAGS = ['model_path', 'init_model_path', 'stds', 'max_train_img_size', 'max_val_img_size', 'batch_size',
               'wlm_weight', 'acc_weight', 'bn_momentum', 'perturb', 'standalone_channels', 'standalone_layers']
# Scoring flags recorded in settings.json only where they differ from these values, which studies scored with
# before they were flags here: the settings of such studies (and their reports) stay as they were.
LATER_FLAGS = {'score_precision': 'fp32', 'acc_train_img_size': None, 'acc_val_img_size': None}


def add_score_args(p):
    """The scoring flags shared by scores.py and nb201.py: stage 2's, and the study's own."""
    add_stage2_scoring_args(p)
    # The study scores the published combinations (gamma 16 in angle+wlm and acc+wlm, acc weighted 1 in
    # angle+acc) where stage 2 keeps the reference's 0, and the acc term of acc+wlm on the images of acc.
    p.set_defaults(wlm_weight=16.0, acc_weight=1.0, acc_train_img_size=None, acc_val_img_size=None)
    g = p.add_argument_group('proxy study scoring')
    g.add_argument('--metrics', default=','.join(METRICS), help='comma-separated metrics (default: all)')
    g.add_argument('--scoring_seeds', type=int, default=2, help='K seeds per random metric: --seed .. --seed+K-1')
    g.add_argument('--seed', type=int, default=0, help='first scoring seed')
    g.add_argument('--standalone_channels', type=int, default=None,
                   help='C of the stand-alone networks (zero-cost metrics); None: the ground truth\'s protocol')
    g.add_argument('--standalone_layers', type=int, default=None, help='their cells; None: the protocol\'s')
    g.add_argument('--data', default=None, help='dataset folder (default: the supernet\'s)')
    return p


def check_score_args(args):
    """A checked copy of args, --stds and --metrics parsed; one UserError for the first bad value."""
    metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    require([(not unknown, f'unknown --metrics {unknown}; choose from {", ".join(METRICS)}'),
             (args.scoring_seeds >= 1, '--scoring_seeds must be >= 1')])
    args = check_scoring_args(args, metrics)
    args.metrics = metrics
    return args


@dataclasses.dataclass
class Setup:
    ctx: ScoringContext     # the trained (and initial) supernet on its own data split
    dataset: str            # what the supernet was trained on (data.py's name)


def supernet_data_args(args):
    """The data flags of the supernet's own train / valid split: all None (the checkpoint's) but --data, which
    may move it."""
    return argparse.Namespace(
        dataset=None, data=args.data, split_data=None, download=False, split=None, train_portion=None,
        split_seed=None, split_file=None, train_subset=0, valid_subset=0, random_label=0)


def check_cells(space, cells, source):
    for cand in cells:
        try:
            space.check(cand)
        except GenotypeError as e:
            raise UserError(f'{source}: candidate {list(cand)} is not in the {space.name} search space of the '
                            f'supernet ({e}); remove it')


def build_context(args, device, cells, source, protocol=None):
    """Setup for scoring `cells` (read from `source`, named in errors); everything a user can get wrong
    fails here. `protocol`: the ground truth's, where known: its dataset must be the supernet's, its
    init_channels / layers are the default shape of the stand-alone networks."""
    protocol = protocol or {}
    scoring = build_scoring(args, device, args.metrics, data_args=supernet_data_args(args), cache={},
                            standalone_channels=args.standalone_channels or protocol.get('init_channels'),
                            standalone_layers=args.standalone_layers or protocol.get('layers'))
    dataset = scoring.settings.dataset
    if protocol.get('dataset') and protocol['dataset'] != dataset:
        raise UserError(f'the supernet {args.model_path} was trained on {dataset} but the ground truth on '
                        f'{protocol["dataset"]}; pass a supernet trained by stage 1 on {protocol["dataset"]}')
    check_cells(scoring.ctx.space, cells, source)
    return Setup(scoring.ctx, dataset)


def score_settings(args):
    """What settings.json records: SCORE_FLAGS, and LATER_FLAGS away from their earlier values."""
    later = {k: getattr(args, k) for k, v in LATER_FLAGS.items() if getattr(args, k) != v}
    return {**{k: getattr(args, k) for k in SCORE_FLAGS}, **later}


def done_scores(save, args):
    """(candidate, metric, seed) already scored; refuses a run directory scored with other flags. A line
    cut short by a kill is dropped."""
    settings = score_settings(args)
    path = save / SETTINGS
    if path.exists():
        current = {**settings, **{k: getattr(args, k) for k in LATER_FLAGS}}
        saved = json_document('--save', path, {}, 'the settings.json of a scores run')
        changed = changed_flags(saved, current,
                                fallback={**{k: None for k in SCORE_FLAGS}, **LATER_FLAGS})
        if changed:
            raise UserError(f'{save} holds scores made with other flags ({"; ".join(changed)}); use the same '
                            'flags to resume, or another --save')
    save.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2))
    out = save / OUTPUT
    if not out.exists():
        return set()
    text = out.read_text()
    if text and not text.endswith('\n'):
        atomic_write_text(out, text[:text.rfind('\n') + 1])
    return {(tuple(r['candidate']), r['metric'], r['seed']) for _, r in read_jsonl(out, 'scores')}


def score_cells(ctx, cells, names, args, save):
    """Append the scores of `cells` (tuples) not yet in save/scores.jsonl; returns its path. `names`:
    candidate -> a readable name for the log."""
    done = done_scores(save, args)
    setup_logging(save / 'log.txt')
    seeds = list(range(args.seed, args.seed + args.scoring_seeds))
    logger.info('scoring %d cells by %d metrics with seeds %s on %s', len(cells), len(args.metrics), seeds,
                ctx.device)
    for n, cand in enumerate(cells, 1):
        t0 = time.time()
        ctx.cache.clear()            # the parts shared by the metrics (acc, wlm, angle) of this cell
        for metric in args.metrics:
            for seed in seeds[:1] if metric in DETERMINISTIC else seeds:
                if (cand, metric, seed) in done:
                    continue
                info = METRICS[metric](dataclasses.replace(ctx, seed=seed), list(cand))
                # a full disk: one error line, and no half line left behind
                append_line(save / OUTPUT, json.dumps({'candidate': list(cand), 'metric': metric, 'seed': seed,
                                                       **info}))
        logger.info('[%d/%d] %s scored (%.1fs)', n, len(cells), names.get(cand, list(cand)), time.time() - t0)
    return save / OUTPUT
