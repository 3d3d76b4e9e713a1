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


from data import load_search_data
from evolutionary_search.metrics import DETERMINISTIC, METRICS, NEEDS_INIT, ScoringContext
from evolutionary_search.supernet_io import fill_inherited, load_init_supernet, load_supernet
from genotypes import GenotypeError
from proxy_study.records import read_jsonl
from spaces import SPACE_NAMES
from devices import memory_format
from utils import UserError, atomic_write_text, logger, parse_stds, require, setup_logging

OUTPUT, SETTINGS = 'scores.jsonl', 'settings.json'
# Flags that change scores: fixed for a run directory.
SCORE_FLAGS = ['model_path', 'init_model_path', 'stds', 'max_train_img_size', 'max_val_img_size', 'batch_size',
               'wlm_weight', 'acc_weight', 'bn_momentum', 'perturb', 'standalone_channels', 'standalone_layers']


def add_score_args(p):
    """The scoring flags shared by scores.py and nb201.py."""
    p.add_argument('--model_path', required=True, help='trained supernet checkpoint of stage 1')
    p.add_argument('--init_model_path', default=None, help='its checkpoint_epoch_0.pth.tar (angle metrics)')
    p.add_argument('--metrics', default=','.join(METRICS), help='comma-separated metrics (default: all)')
    p.add_argument('--scoring_seeds', type=int, default=2, help='K seeds per random metric: --seed .. --seed+K-1')
    p.add_argument('--seed', type=int, default=0, help='first scoring seed')
    p.add_argument('--stds', default='0.001,0.003,0.006', help='weight-noise stds of the flatness metrics')
    p.add_argument('--max_train_img_size', type=int, default=850, help='BN recalibration images')
    p.add_argument('--max_val_img_size', type=int, default=25000,
                   help='validation images of acc and flatness (also the acc term of acc+wlm)')
    p.add_argument('--batch_size', type=int, default=64, help='BN recalibration batch (and zero-cost batch)')
    p.add_argument('--test_batch_size', type=int, default=None, help='validation batch (speed only)')
    p.add_argument('--wlm_weight', type=float, default=16.0, help='gamma of angle+wlm and acc+wlm (published: 16)')
    p.add_argument('--acc_weight', type=float, default=1.0, help='weight of acc in angle+acc')
    p.add_argument('--bn_momentum', type=float, default=None, help='None: exact average (see stage 2)')
    p.add_argument('--perturb', default='cumulative', choices=['cumulative', 'direct'], help='noise scheme')
    p.add_argument('--standalone_channels', type=int, default=None,
                   help='C of the stand-alone networks (zero-cost metrics); None: the ground truth\'s protocol')
    p.add_argument('--standalone_layers', type=int, default=None, help='their cells; None: the protocol\'s')
    p.add_argument('--space', default=None, choices=SPACE_NAMES,
                   help='search space of the supernet; None: the one its checkpoint records (darts for reference '
                        'checkpoints)')
    p.add_argument('--init_channels', type=int, default=None, help='supernet C (reference checkpoints: 16)')
    p.add_argument('--layers', type=int, default=None, help='supernet cells (reference checkpoints: 8)')
    p.add_argument('--data', default=None, help='dataset folder (default: the supernet\'s)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='device')
    p.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True, help='memory format')
    return p


def check_score_args(args):
    """Parse --stds and --metrics in place; one UserError for the first bad value."""
    args.stds = parse_stds(args.stds)
    args.metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    unknown = [m for m in args.metrics if m not in METRICS]
    require([(not unknown, f'unknown --metrics {unknown}; choose from {", ".join(METRICS)}'),
             (args.scoring_seeds >= 1, '--scoring_seeds must be >= 1'),
             (args.init_model_path or not NEEDS_INIT & set(args.metrics),
              f'--init_model_path is needed for {", ".join(sorted(NEEDS_INIT & set(args.metrics)))}: pass the '
              'checkpoint_epoch_0.pth.tar of stage 1, or leave those out of --metrics')])
    require([(getattr(args, f) >= 1, f'--{f} must be >= 1') for f in ('max_train_img_size', 'max_val_img_size',
                                                                       'batch_size')])
    return args


@dataclasses.dataclass
class Setup:
    ctx: ScoringContext     # the trained (and initial) supernet on its own data split
    dataset: str            # what the supernet was trained on (data.py's name)


def supernet_data_args(args, meta):
    """The data flags of the supernet's own train / valid split (the checkpoint's; --data may move it)."""
    data_args = argparse.Namespace(
        dataset=None, data=args.data, split_data=None, download=False, split=None, train_portion=None,
        split_seed=None, split_file=None, train_subset=0, valid_subset=0, random_label=0)
    fill_inherited(data_args, meta.get('args', {}))    # a reference checkpoint: CIFAR-100, its NB201 split file
    return data_args


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
    model, meta, space = load_supernet(args.model_path, args)
    data_args = supernet_data_args(args, meta)
    dataset = data_args.dataset
    if protocol.get('dataset') and protocol['dataset'] != dataset:
        raise UserError(f'the supernet {args.model_path} was trained on {dataset} but the ground truth on '
                        f'{protocol["dataset"]}; pass a supernet trained by stage 1 on {protocol["dataset"]}')
    data = load_search_data(data_args).resident(device)
    init_model = load_init_supernet(args.init_model_path, args, model).to(device) if args.init_model_path else None
    if data.num_classes != model.num_classes:
        raise UserError(f'{args.model_path} has {model.num_classes} classes but its dataset {dataset} '
                        f'has {data.num_classes}; pass --data for the dataset it was trained on')
    check_cells(space, cells, source)
    fmt = memory_format(args.channels_last)
    ctx = ScoringContext(
        model=model.to(device).to(memory_format=fmt).eval(), init_model=init_model, data=data, device=device,
        stds=tuple(args.stds), batch_size=args.batch_size,
        test_batch_size=args.test_batch_size or (64 if device.type == 'cpu' else 512),
        max_train_img_size=args.max_train_img_size, max_val_img_size=args.max_val_img_size,
        acc_train_img_size=args.max_train_img_size, acc_val_img_size=args.max_val_img_size,
        wlm_weight=args.wlm_weight, acc_weight=args.acc_weight, bn_momentum=args.bn_momentum, perturb=args.perturb,
        memory_format=fmt, cache={}, space=space,
        standalone_channels=args.standalone_channels or protocol.get('init_channels'),
        standalone_layers=args.standalone_layers or protocol.get('layers'))
    return Setup(ctx, dataset)


def done_scores(save, args):
    """(candidate, metric, seed) already scored; refuses a run directory scored with other flags. A line
    cut short by a kill is dropped."""
    settings = {k: getattr(args, k) for k in SCORE_FLAGS}
    path = save / SETTINGS
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [f'--{k} {saved.get(k)} -> {v}' for k, v in settings.items() if saved.get(k) != v]
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
    with open(save / OUTPUT, 'a') as out:
        for n, cand in enumerate(cells, 1):
            t0 = time.time()
            ctx.cache.clear()            # the parts shared by the metrics (acc, wlm, angle) of this cell
            for metric in args.metrics:
                for seed in seeds[:1] if metric in DETERMINISTIC else seeds:
                    if (cand, metric, seed) in done:
                        continue
                    info = METRICS[metric](dataclasses.replace(ctx, seed=seed), list(cand))
                    out.write(json.dumps({'candidate': list(cand), 'metric': metric, 'seed': seed, **info}) + '\n')
                    out.flush()
            logger.info('[%d/%d] %s scored (%.1fs)', n, len(cells), names.get(cand, list(cand)), time.time() - t0)
    return save / OUTPUT
