"""Stage 1: train the SPOS supernet with uniform single-path sampling (the reference's stage 1).

    cd train_supernet
    python3 train.py --seed 1 --data ../data --epochs 250 --save ../runs/supernet-c100 \
        --random_label 0 --split_data 1                     # CIFAR-100 as the reference
    python3 train.py --dataset fashion-mnist --epochs 2 --init_channels 8 --layers 5   # offline, CPU
    python3 train.py --space nb201 --dataset cifar10 --split_data 1 --epochs 250 --save ../runs/nb201-c10
    python3 train.py --resume ../runs/supernet-c100      # after a crash (in the first epoch: starts over)

Writes to --save: checkpoint_epoch_0.pth.tar (initial weights, needed by the angle metric),
checkpoint_epoch_{N}.pth.tar every --save_freq epochs and at the end, last.pth.tar (everything to
resume exactly), split.json, log.txt, args.json, metrics.jsonl and TensorBoard events in tb/.
"""
import argparse
import sys
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

from data import add_data_args  # noqa: E402
from devices import add_deterministic_flag  # noqa: E402
from spaces import SPACE_NAMES, get_space  # noqa: E402
from heap import DEFAULT_HEADROOM  # noqa: E402
from train_supernet.supernet_training import LAST, SupernetRun  # noqa: E402
from training import add_grad_form_flag, check_ranges  # noqa: E402
from utils import (ArgumentParser, add_noop_flags, locks_released, pop_noop_flags, require,  # noqa: E402
                   resolve_run_paths, run_cli)


def get_args_parser():
    p = ArgumentParser(description='Stage 1: SPOS supernet training (GeNAS).')
    add_data_args(p, default_dataset='cifar100')
    _add_training_flags(p.add_argument_group('training (reference flags)'))
    additions = p.add_argument_group('additions')
    _add_run_flags(additions)
    _add_speed_and_fidelity_flags(additions)
    add_noop_flags(p, NOOP_FLAGS, notes={'model_path': 'the reference\'s stage 1 ignores it too; in stage 2 it '
                                                              'is the trained supernet'})
    return p


def _add_training_flags(g):
    g.add_argument('--batch_size', type=int, default=64,
                   help='batch size PER PROCESS, as the reference (under torchrun the global batch is this x the '
                        'processes; stage 3\'s --batch_size is global)')
    g.add_argument('--learning_rate', type=float, default=0.025, help='initial SGD learning rate')
    g.add_argument('--learning_rate_min', type=float, default=0.001, help='cosine schedule floor')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--weight_decay', type=float, default=3e-4, help='SGD weight decay')
    g.add_argument('--epochs', type=int, default=250, help='training epochs')
    g.add_argument('--init_channels', type=int, default=16, help='channels of the first cell (C)')
    g.add_argument('--layers', type=int, default=None,
                   help='darts: number of cells (None: 8); nb201: cells per stage (None: 5, as the benchmark)')
    g.add_argument('--grad_clip', type=float, default=5.0, help='gradient norm clip (0: off)')
    g.add_argument('--seed', type=int, default=2, help='seed of weights, paths and augmentation')
    g.add_argument('--save', default=None, help='run directory; None means runs/supernet-<dataset>-<time>')
    g.add_argument('--report_freq', type=int, default=50, help='log a line every N steps')


def _add_run_flags(g):
    g.add_argument('--space', default='darts', choices=SPACE_NAMES,
                   help='search space: darts (the reference\'s) or nb201 (NAS-Bench-201, 6 edges x 5 ops)')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='where to train')
    add_deterministic_flag(g)
    add_grad_form_flag(g)
    g.add_argument('--workers', type=int, default=0,
                   help='unused for in-memory datasets (batches are augmented on the device); kept for '
                        'command-line compatibility')
    g.add_argument('--resume', default=None, help='last.pth.tar (or its run directory) to continue from')
    g.add_argument('--save_freq', type=int, default=5, help='write checkpoint_epoch_N every N epochs')
    g.add_argument('--amp', action='store_true',
                   help='mixed precision (bf16 where supported, else fp16 with a gradient scaler); for GPUs')


def _add_speed_and_fidelity_flags(g):
    g.add_argument('--rss_headroom', type=float, default=DEFAULT_HEADROOM,
                   help='CPU: when the resident memory exceeds (1 + this) x that after the first step, return '
                        'freed heap memory to the OS (peak RSS 1.9 instead of 2.7 GB at C=16, 8 layers, batch 64, at '
                        'no measurable cost); 0: after every step; -1: never')
    g.add_argument('--low_memory', action='store_true', help='same as --rss_headroom 0 (lowest memory, 30%% slower)')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                   help='channels-last memory format (1.5x faster supernet training on CPU, measured)')
    g.add_argument('--augment', action=argparse.BooleanOptionalAction, default=True,
                   help='random crop (padding 4) and flip of training images, as the reference; --no-augment '
                        'learns faster in very short runs')
    g.add_argument('--valid_paths', type=int, default=1,
                   help='validate this many random paths each epoch and log their mean (the reference: 1)')
    g.add_argument('--valid_bn_images', type=int, default=1280,
                   help='before each epoch\'s validation, re-estimate the BN statistics of the validated path on '
                        'this many training images (restored afterwards); 0: use the running statistics as the '
                        'reference does, which gives near-chance accuracy early in training')
    g.add_argument('--zero_grad', default='inplace', choices=['inplace', 'none'],
                   help='inplace: zero gradients in place as PyTorch 1.7 did, so every op sampled once keeps '
                        'getting weight decay and momentum (the published supernets); none: set them to None')
    g.add_argument('--scheduler_step_first', action='store_true',
                   help="step the LR scheduler before each epoch, as the reference does (its bug: epoch e "
                        "trains at the rate meant for e+1)")
    g.add_argument('--stop_after', type=int, default=0,
                   help='stop after N epochs of this invocation, resumable (for time-limited jobs; 0: off)')
    g.add_argument('--allow_world_size_change', action='store_true',
                   help='resume with another number of processes than the run was trained with (changes the global '
                        'batch, so the run differs from an uninterrupted one); refused without this flag')


# The reference's stage-1 flags that do nothing (DARTS leftovers, or a device chosen otherwise here).
NOOP_FLAGS = {'gpu': int, 'cutout': None, 'cutout_length': int, 'drop_path_prob': float, 'model_path': str,
              'unrolled': None, 'arch_learning_rate': float, 'arch_weight_decay': float}


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    pop_noop_flags(args)
    space = get_space(args.space)
    if args.layers is None:
        args.layers = space.default_layers
    require(space.check_shape(args.init_channels, args.layers))
    check_ranges(args)
    require([(args.epochs >= 1, '--epochs must be >= 1'), (args.batch_size >= 2, '--batch_size must be >= 2'),
             (args.learning_rate > 0, '--learning_rate must be > 0'),
             (args.save_freq >= 1, '--save_freq must be >= 1'), (args.report_freq >= 1, '--report_freq must be >= 1'),
             (args.stop_after >= 0, '--stop_after must be >= 0'),
             (args.valid_paths >= 1, '--valid_paths must be >= 1')])
    return resolve_run_paths(args, LAST, f'supernet-{args.dataset}')


@locks_released
def main(args):
    """Train the supernet the flags describe; rank 0's metrics of the last epoch."""
    run = SupernetRun(args)
    with closing(run.dist):                 # the process group ends on every exit path
        run.start()
        return run.train()


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: f'rerun with --resume {args.save}')
