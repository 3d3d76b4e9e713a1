"""Scores for the proxy study: the cells of a ground-truth file scored by every stage-2 metric (and the
zero-cost baselines, which are stage-2 metrics too) on a trained supernet, with K scoring seeds each.

    python3 proxy_study/scores.py --ground_truth runs/study/gt/ground_truth.jsonl \
        --model_path runs/study/supernet/checkpoint_epoch_3.pth.tar \
        --init_model_path runs/study/supernet/checkpoint_epoch_0.pth.tar --scoring_seeds 2 --save runs/study/scores

Writes scores.jsonl in --save: one line per (cell, metric, scoring seed), appended as it goes; rerun the
same command to resume. A seed changes the BN-recalibration batches, the weight noise and the
stand-alone network's initial weights; metrics that do not depend on it (angle, params, macs) are
scored once. The data split is the supernet's own (read from its checkpoint), as in stage 2.
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import genotypes  # noqa: E402
from data import inherit_split, load_search_data  # noqa: E402
from evolutionary_search.metrics import DETERMINISTIC, METRICS, NEEDS_INIT, ScoringContext  # noqa: E402
from proxy_study.records import read_ground_truth, read_jsonl  # noqa: E402
from train_supernet.super_model import Network  # noqa: E402
from utils import (ArgumentParser, UserError, atomic_write_text, choose_device, load_checkpoint,  # noqa: E402
                   load_state_checked, logger, parse_stds, require, run_cli, seed_everything, setup_logging)
from utils import memory_format  # noqa: E402

OUTPUT, SETTINGS = 'scores.jsonl', 'settings.json'
# Flags that change scores: fixed for a run directory.
SCORE_FLAGS = ['model_path', 'init_model_path', 'stds', 'max_train_img_size', 'max_val_img_size', 'batch_size',
               'wlm_weight', 'acc_weight', 'bn_momentum', 'perturb', 'standalone_channels', 'standalone_layers']


def get_args_parser():
    p = ArgumentParser(description='Proxy study, scores: every metric on the cells of a ground-truth file.')
    p.add_argument('--ground_truth', required=True, help='ground_truth.jsonl: the cells to score')
    p.add_argument('--model_path', required=True, help='trained supernet checkpoint of stage 1')
    p.add_argument('--init_model_path', default=None, help='its checkpoint_epoch_0.pth.tar (angle metrics)')
    p.add_argument('--metrics', default=','.join(METRICS), help='comma-separated metrics')
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
    p.add_argument('--init_channels', type=int, default=None, help='supernet C (reference checkpoints: 16)')
    p.add_argument('--layers', type=int, default=None, help='supernet cells (reference checkpoints: 8)')
    p.add_argument('--data', default=None, help='dataset folder (default: the supernet\'s)')
    p.add_argument('--save', required=True, help='run directory (rerun to resume)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='device')
    p.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True, help='memory format')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
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


def load_supernet(path, args):
    """(model, checkpoint) of a stage-1 or reference supernet checkpoint."""
    ckpt = load_checkpoint(path)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.endswith('classifier.weight') for k in state):
        raise UserError(f'{path} is not a supernet checkpoint (no state_dict with classifier weights)')
    C, layers = args.init_channels or ckpt.get('init_channels'), args.layers or ckpt.get('layers')
    if C is None or layers is None:
        raise UserError(f'{path} does not record the supernet shape; pass --init_channels and --layers')
    num_classes = next(v for k, v in state.items() if k.endswith('classifier.weight')).shape[0]
    model = Network(C, num_classes, layers)
    load_state_checked(model, state, path)
    return model, ckpt


def check_dataset(gt, ckpt, path):
    """The supernet must come from the ground truth's dataset (where both record it)."""
    gt_data = (gt.protocol or {}).get('dataset')
    sn_data = ckpt.get('dataset') or ckpt.get('args', {}).get('dataset')
    if gt_data and sn_data and gt_data != sn_data:
        raise UserError(f'the supernet {path} was trained on {sn_data} but the ground truth on {gt_data}; '
                        f'pass a supernet trained by stage 1 on {gt_data}')


def build_context(args, gt, device):
    """ScoringContext on the supernet's own data split; everything a user can get wrong fails here."""
    model, ckpt = load_supernet(args.model_path, args)
    check_dataset(gt, ckpt, args.model_path)
    init_model = load_supernet(args.init_model_path, args)[0].to(device) if args.init_model_path else None
    trained = ckpt.get('args', {})
    data_args = argparse.Namespace(
        dataset=trained.get('dataset', ckpt.get('dataset', 'cifar100')), data=args.data or trained.get('data'),
        download=False, split_data=trained.get('split_data', 1), split=None, train_portion=None, split_seed=None,
        split_file=None, train_subset=0, valid_subset=0, random_label=0)
    inherit_split(data_args, trained)       # the supernet's own split (a reference checkpoint: its NB201 file)
    data = load_search_data(data_args).resident(device)
    if data.num_classes != model.num_classes:
        raise UserError(f'{args.model_path} has {model.num_classes} classes but its dataset {data_args.dataset} '
                        f'has {data.num_classes}; pass --data for the dataset it was trained on')
    for cand in gt.cells:
        try:
            genotypes.check_valid(cand)
        except genotypes.GenotypeError as e:
            raise UserError(f'{args.ground_truth}: candidate {list(cand)} is not in the search space ({e}); '
                            'remove its lines')
    protocol = gt.protocol or {}
    fmt = memory_format(args.channels_last)
    return ScoringContext(
        model=model.to(device).to(memory_format=fmt).eval(), init_model=init_model, data=data, device=device,
        stds=tuple(args.stds), batch_size=args.batch_size,
        test_batch_size=args.test_batch_size or (64 if device.type == 'cpu' else 512),
        max_train_img_size=args.max_train_img_size, max_val_img_size=args.max_val_img_size,
        acc_train_img_size=args.max_train_img_size, acc_val_img_size=args.max_val_img_size,
        wlm_weight=args.wlm_weight, acc_weight=args.acc_weight, bn_momentum=args.bn_momentum, perturb=args.perturb,
        memory_format=fmt, cache={}, standalone_channels=args.standalone_channels or protocol.get('init_channels'),
        standalone_layers=args.standalone_layers or protocol.get('layers'))


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


def main(args):
    device = choose_device(args.device)
    seed_everything(args.seed)
    gt = read_ground_truth(args.ground_truth)
    ctx = build_context(args, gt, device)
    save = Path(args.save)
    done = done_scores(save, args)
    setup_logging(save / 'log.txt')
    seeds = list(range(args.seed, args.seed + args.scoring_seeds))
    logger.info('scoring %d cells by %d metrics with seeds %s on %s', len(gt.cells), len(args.metrics), seeds, device)
    with open(save / OUTPUT, 'a') as out:
        for n, cand in enumerate(gt.cells, 1):
            t0 = time.time()
            ctx.cache.clear()            # the parts shared by the metrics (acc, wlm, angle) of this cell
            for metric in args.metrics:
                for seed in seeds[:1] if metric in DETERMINISTIC else seeds:
                    if (cand, metric, seed) in done:
                        continue
                    info = METRICS[metric](dataclasses.replace(ctx, seed=seed), list(cand))
                    out.write(json.dumps({'candidate': list(cand), 'metric': metric, 'seed': seed, **info}) + '\n')
                    out.flush()
            logger.info('[%d/%d] %s scored (%.1fs)', n, len(gt.cells), gt.names.get(cand, list(cand)),
                        time.time() - t0)
    return save / OUTPUT


if __name__ == '__main__':
    run_cli(main, parse_args)
