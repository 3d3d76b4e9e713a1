"""Scores for the proxy study: the cells of a ground-truth file scored by every stage-2 metric (and the
zero-cost baselines, which are stage-2 metrics too) on a trained supernet, with K scoring seeds each.

    python3 proxy_study/scores.py --ground_truth runs/study/gt/ground_truth.jsonl \
        --model_path runs/study/supernet/checkpoint_epoch_3.pth.tar \
        --init_model_path runs/study/supernet/checkpoint_epoch_0.pth.tar --scoring_seeds 2 --save runs/study/scores

Writes scores.jsonl in --save: one line per (cell, metric, scoring seed), appended as it goes; rerun the
same command to resume. A seed changes the BN-recalibration batches, the weight noise and the
stand-alone network's initial weights; metrics that do not depend on it (angle, params, macs) are
scored once. The data split is the supernet's own (read from its checkpoint), as in stage 2. The logic
is proxy_study/scoring.py (shared with the NAS-Bench-201 study, proxy_study/nb201.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

from proxy_study.records import read_ground_truth  # noqa: E402
from proxy_study.scoring import add_score_args, build_context, check_score_args, score_cells  # noqa: E402
from devices import choose_device  # noqa: E402
from seeding import seed_everything  # noqa: E402
from inputs import writable_dir  # noqa: E402
from utils import ArgumentParser, lock_run_dir, locks_released, run_cli  # noqa: E402

KIND = 'proxy-scores'


def get_args_parser():
    p = ArgumentParser(description='Proxy study, scores: every metric on the cells of a ground-truth file.')
    p.add_argument('--ground_truth', required=True, help='ground_truth.jsonl: the cells to score')
    add_score_args(p)
    p.add_argument('--save', required=True, help='run directory (rerun to resume)')
    return p


def parse_args(argv=None):
    return check_score_args(get_args_parser().parse_args(argv))


@locks_released
def main(args):
    writable_dir('--save', args.save)
    device = choose_device(args.device)
    seed_everything(args.seed)
    gt = read_ground_truth(args.ground_truth)
    setup = build_context(args, device, gt.cells, args.ground_truth, gt.protocol)
    lock_run_dir(args.save, KIND)               # every user error above: nothing written
    return score_cells(setup.ctx, gt.cells, gt.names, args, Path(args.save))


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: 'rerun the same command (scored cells are kept)')
