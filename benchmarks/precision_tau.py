"""Does reduced precision change the flatness ranking? Kendall's tau between fp32 scores and scores
computed with TF32 / bf16 / fp16, over random candidates of a trained supernet. Prints one JSON object.

    python3 benchmarks/precision_tau.py --model_path runs/supernet-fmnist/checkpoint_epoch_2.pth.tar
    python3 benchmarks/precision_tau.py --model_path ... --device cuda --candidates 30
    python3 benchmarks/precision_tau.py --model_path ... --metric angle+wlm --wlm_weight 16 \
        --init_model_path runs/supernet-fmnist/checkpoint_epoch_0.pth.tar

Scoring as stage 2 does (evolutionary_search/metrics.py) on the data and split the supernet was trained on;
the defaults score `wlm` on 256 BN and 512 validation images. A tau is NaN where it is undefined (the scores
of one precision are all equal).
"""
import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import genotypes  # noqa: E402
from data import load_search_data  # noqa: E402
from devices import choose_device, memory_format  # noqa: E402
from evolutionary_search.metrics import METRICS, NEEDS_INIT, PRECISIONS, ScoringContext  # noqa: E402
from evolutionary_search.supernet_io import fill_inherited, load_init_supernet, load_supernet  # noqa: E402
from proxy_study.stats import kendall_tau  # noqa: E402
from utils import ArgumentParser, UserError, parse_stds, require, run_cli  # noqa: E402


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model_path', required=True, help='trained supernet checkpoint')
    p.add_argument('--init_model_path', default=None,
                   help='supernet checkpoint before training (checkpoint_epoch_0.pth.tar; the angle metrics)')
    p.add_argument('--init_channels', type=int, default=None,
                   help='supernet C (default: the checkpoint\'s; needed for reference checkpoints)')
    p.add_argument('--layers', type=int, default=None,
                   help='supernet cells (default: the checkpoint\'s; needed for reference checkpoints)')
    p.add_argument('--data', default=None, help='dataset folder (default: the one the supernet was trained on)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='device (default: cpu)')
    p.add_argument('--candidates', type=int, default=30, help='random candidates to rank (default: 30)')
    p.add_argument('--precisions', default=None,
                   help='comma-separated; default: bf16,fp16 on a CPU, tf32,bf16,fp16 on a GPU')
    p.add_argument('--metric', default='wlm', choices=list(METRICS), help='scoring metric (default: wlm)')
    p.add_argument('--stds', default='0.001,0.003,0.006', help='weight-noise stds of wlm (default: %(default)s)')
    p.add_argument('--wlm_weight', type=float, default=0.0, help='gamma of angle+wlm and acc+wlm (default: 0)')
    p.add_argument('--max_train_img_size', type=int, default=256, help='BN recalibration images (default: 256)')
    p.add_argument('--max_val_img_size', type=int, default=512, help='validation images (default: 512)')
    p.add_argument('--batch_size', type=int, default=64, help='BN recalibration batch size (default: 64)')
    p.add_argument('--seed', type=int, default=3, help='seed of the BN batches and weight noise (default: 3)')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    args.stds = parse_stds(args.stds)
    require([(getattr(args, f) >= 1, f'--{f} must be >= 1, got {getattr(args, f)}')
             for f in ('candidates', 'max_train_img_size', 'max_val_img_size', 'batch_size')])
    if args.precisions:
        args.precisions = args.precisions.split(',')
        bad = [p for p in args.precisions if p not in PRECISIONS]
        require([(not bad, f'--precisions: unknown {bad[0] if bad else ""!r}; choose from {",".join(PRECISIONS)}')])
    if args.metric in NEEDS_INIT and not args.init_model_path:
        raise UserError(f'--metric {args.metric} needs --init_model_path (the checkpoint_epoch_0.pth.tar of stage 1)')
    return args


def scoring_data(args, trained_args):
    """The search data of the dataset and split the supernet was trained on (stage 2's defaults)."""
    data_args = argparse.Namespace(dataset=None, data=args.data, download=False, split_data=None, split=None,
                                   train_portion=None, split_seed=None, split_file=None, train_subset=0,
                                   valid_subset=0, random_label=0)
    fill_inherited(data_args, trained_args)
    return load_search_data(data_args)


def build_context(args, device):
    """The scoring context of stage 2 for the supernet of --model_path (channels-last, as the search's default)."""
    shape = argparse.Namespace(space=None, init_channels=args.init_channels, layers=args.layers)
    model, meta, space = load_supernet(args.model_path, shape)
    init_model = load_init_supernet(args.init_model_path, shape, model).to(device) \
        if args.metric in NEEDS_INIT else None
    data = scoring_data(args, meta.get('args', {})).resident(device)
    if data.num_classes != model.num_classes:
        raise UserError(f'{args.model_path} has {model.num_classes} classes but its dataset has {data.num_classes}')
    fmt = memory_format(True)
    return ScoringContext(model=model.to(device).to(memory_format=fmt).eval(), init_model=init_model, data=data,
                          device=device, seed=args.seed, stds=tuple(args.stds), batch_size=args.batch_size,
                          test_batch_size=64 if device.type == 'cpu' else 512,
                          max_train_img_size=args.max_train_img_size, max_val_img_size=args.max_val_img_size,
                          wlm_weight=args.wlm_weight, memory_format=fmt, space=space)


def score_all(ctx, scorer, cands):
    """(infos, seconds per candidate) of every candidate under ctx's precision."""
    t0 = time.perf_counter()
    infos = [scorer(ctx, c) for c in cands]
    return infos, (time.perf_counter() - t0) / len(cands)


def flatness_slopes(infos, stds):
    """The flatness part of wlm alone: poor minus its |L1 / s1| term, i.e. the loss slopes between levels."""
    return [i['poor'] - abs(i['losses'][0] / stds[0]) for i in infos if 'poor' in i]


def main(args):
    device = choose_device(args.device)          # before loading anything: --device cuda without a GPU fails first
    precisions = args.precisions or (['bf16', 'fp16'] if args.device == 'cpu' else ['tf32', 'bf16', 'fp16'])
    ctx = build_context(args, device)
    rng = random.Random(0)
    cands = [genotypes.random_candidate(rng) for _ in range(args.candidates)]
    scorer = METRICS[args.metric]
    out = {'device': args.device, 'metric': args.metric, 'candidates': len(cands), 'model_path': args.model_path,
           'results': {}}
    reference = ref_slopes = None
    for prec in ['fp32'] + precisions:
        infos, seconds = score_all(dataclasses.replace(ctx, precision=prec), scorer, cands)
        scores, slopes = [i['score'] for i in infos], flatness_slopes(infos, args.stds)
        if reference is None:
            reference, ref_slopes = scores, slopes
        r = out['results'][prec] = {
            'kendall_tau_vs_fp32': kendall_tau(reference, scores),
            'slope_kendall_tau_vs_fp32': kendall_tau(ref_slopes, slopes) if slopes else None,
            'max_relative_score_change': max(abs(s - f) / abs(f) for s, f in zip(scores, reference)),
            'seconds_per_candidate': seconds}
        print(f'{prec}: tau {r["kendall_tau_vs_fp32"]:.3f} (slopes {r["slope_kendall_tau_vs_fp32"]}), '
              f'{seconds:.2f} s per candidate', file=sys.stderr)
    print(json.dumps(out, indent=2))
    return out


if __name__ == '__main__':
    run_cli(main, parse_args)
