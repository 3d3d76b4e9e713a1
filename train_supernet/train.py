"""Stage 1: train the SPOS supernet with uniform single-path sampling (SPEC section 3).

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
import itertools
import math
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from data import BatchLoader, add_data_args, inherit_split, load_search_data, write_split_file  # noqa: E402
from spaces import SPACE_NAMES, get_space  # noqa: E402
from train_supernet.heap import HeapTrimmer  # noqa: E402
from spaces.supernet import evaluate_candidate  # noqa: E402
from training import (backward_and_step, claim_run_dir, require_finite_loss, require_finite_weights, resume_hint,  # noqa: E402
                      resume_training, stop_requested)
from checkpoints import load_checkpoint, load_state_checked, save_checkpoint  # noqa: E402
from devices import amp_dtype, choose_device, make_scaler, memory_format  # noqa: E402
from distributed import Dist  # noqa: E402
from seeding import derive_seed, get_rng_state, seed_everything, set_rng_state  # noqa: E402
from utils import (ArgumentParser, Run, UserError, add_noop_flags, locks_released, logger, pop_noop_flags,  # noqa: E402
                   progress, require, restarts_from_beginning, resolve_run_paths, run_cli)

LAST, INITIAL = 'last.pth.tar', 'checkpoint_epoch_0.pth.tar'


def get_args_parser():
    p = ArgumentParser(description='Stage 1: SPOS supernet training (GeNAS).')
    add_data_args(p, default_dataset='cifar100')
    g = p.add_argument_group('training (reference flags)')
    g.add_argument('--batch_size', type=int, default=64, help='batch size')
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
    g = p.add_argument_group('additions')
    g.add_argument('--space', default='darts', choices=SPACE_NAMES,
                   help='search space: darts (the reference\'s) or nb201 (NAS-Bench-201, 6 edges x 5 ops)')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='where to train')
    g.add_argument('--workers', type=int, default=0,
                   help='unused for in-memory datasets (batches are augmented on the device); kept for '
                        'command-line compatibility')
    g.add_argument('--resume', default=None, help='last.pth.tar (or its run directory) to continue from')
    g.add_argument('--save_freq', type=int, default=5, help='write checkpoint_epoch_N every N epochs')
    g.add_argument('--amp', action='store_true',
                   help='mixed precision (bf16 where supported, else fp16 with a gradient scaler); for GPUs')
    g.add_argument('--rss_headroom', type=float, default=0.2,
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
    add_noop_flags(p, NOOP_FLAGS)
    return p


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
    require([(args.epochs >= 1, '--epochs must be >= 1'), (args.batch_size >= 2, '--batch_size must be >= 2'),
             (args.learning_rate > 0, '--learning_rate must be > 0'),
             (args.save_freq >= 1, '--save_freq must be >= 1'), (args.report_freq >= 1, '--report_freq must be >= 1'),
             (args.stop_after >= 0, '--stop_after must be >= 0'),
             (args.valid_paths >= 1, '--valid_paths must be >= 1')])
    return resolve_run_paths(args, LAST, f'supernet-{args.dataset}')


def model_meta(args, num_classes):
    """What stage 2 needs to rebuild the supernet from a checkpoint alone."""
    return {'init_channels': args.init_channels, 'layers': args.layers, 'num_classes': num_classes,
            'dataset': args.dataset, 'space': args.space}


def train_step(model, x, y, candidate, optimizer, criterion, grad_clip, set_to_none=False, amp=False, scaler=None,
               space=None):
    """One SPOS step on one path: forward (autocast with --amp), cross-entropy, backward, clip, SGD.
    `space` (a SearchSpace; None: DARTS) splits the candidate into the supernet's forward arguments.
    Returns (logits, loss)."""
    optimizer.zero_grad(set_to_none=set_to_none)
    with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=amp):
        logits = model(x, *(space or get_space()).forward_args(candidate))   # through DDP when wrapped
        loss = criterion(logits, y)
    backward_and_step(loss, optimizer, scaler or make_scaler(x.device, amp), model.parameters(), grad_clip)
    return logits, loss


def train_one_epoch(model, loader, optimizer, criterion, path_rng, args, epoch, device, scaler, trim_heap=None):
    """One epoch of SPOS: every step a fresh uniformly random (repaired) path; trim_heap (a HeapTrimmer)
    is called after each step. Returns this process's (loss sum, correct, images)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)      # sums stay on the device between reports
    seen = 0
    set_to_none = args.zero_grad == 'none'
    space = get_space(args.space)
    bar = progress(loader, desc=f'epoch {epoch + 1}/{args.epochs}', total=len(loader))
    for step, (x, y) in enumerate(bar):
        cand = space.random_candidate(path_rng)
        logits, loss = train_step(model, x, y, cand, optimizer, criterion, args.grad_clip, set_to_none, args.amp,
                                  scaler, space)
        if trim_heap:
            trim_heap()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if (step + 1) % args.report_freq == 0 or step + 1 == len(loader):
            avg = loss_sum.item() / seen
            require_finite_loss(avg, f'at epoch {epoch + 1} step {step + 1}', diverged_fix(args))
            acc = correct.item() / seen
            bar.set_postfix(loss=f'{avg:.3f}', acc=f'{100 * acc:.1f}%')
            if (step + 1) % args.report_freq == 0:
                logger.info('train epoch %d step %03d/%d loss %.4f acc %.2f%%', epoch + 1, step + 1, len(loader),
                            avg, 100 * acc)
    return loss_sum.item(), correct.item(), seen


def diverged_fix(args):
    return f'lower --learning_rate or --grad_clip and {resume_hint(args.save, LAST)}'


def validate_random_paths(model, data, args, epoch, valid_loader, memory_format):
    """Mean validation loss and top-1 of --valid_paths random paths (seeded by the epoch), each after
    re-estimating its BN statistics on --valid_bn_images training images; the supernet's own BN
    buffers are restored afterwards."""
    rng = random.Random(derive_seed(args.seed, 'valid', epoch))
    results = []
    for _ in range(args.valid_paths):
        cand = get_space(args.space).random_candidate(rng)
        with model.preserved_path(cand):
            if args.valid_bn_images:
                bn_loader = BatchLoader(data.train, data.train_idx, args.batch_size, valid_loader.device,
                                        shuffle=True, augment=args.augment, seed=derive_seed(args.seed, 'valid_bn'),
                                        memory_format=memory_format)
                bn_loader.set_epoch(epoch)
                n_batches = math.ceil(args.valid_bn_images / args.batch_size)
                model.recalibrate_bn(cand, itertools.islice(bn_loader, n_batches))
            results.append(evaluate_candidate(model, cand, valid_loader))
    return sum(r[0] for r in results) / len(results), sum(r[1] for r in results) / len(results)


def _check_world_size(args, saved, world_size):
    """Another number of processes changes the global batch: refused unless --allow_world_size_change."""
    if saved is None or saved == world_size:
        return
    change = (f'{args.resume} was trained by {saved} process(es) (global batch {args.batch_size * saved}); this '
              f'run has {world_size} (global batch {args.batch_size * world_size})')
    if not args.allow_world_size_change:
        raise UserError(f'{change}: start {saved} process(es), or pass --allow_world_size_change to continue with '
                        'the new global batch')
    logger.warning('WARNING: %s; continuing as --allow_world_size_change asks: the run will differ from an '
                   'uninterrupted one', change)


def _check_resumable(args, ckpt, world_size, data_digest):
    """UserError unless ckpt is a stage-1 last.pth.tar of this space, process count and split."""
    if not isinstance(ckpt, dict) or 'scheduler' not in ckpt or 'path_rng' not in ckpt:
        raise UserError(f'{args.resume} is not a resumable stage-1 checkpoint (it lacks scheduler / RNG state); '
                        f'pass the {LAST} of a run directory')
    if ckpt.get('space', 'darts') != args.space:
        raise UserError(f'{args.resume} is a {ckpt.get("space", "darts")} supernet; resume it with --space '
                        f'{ckpt.get("space", "darts")}')
    _check_world_size(args, ckpt.get('world_size'), world_size)
    if ckpt.get('split_digest', data_digest) != data_digest:
        raise UserError(f'{args.resume} was trained on {ckpt.get("split")}, not on the split these flags give; resume '
                        'without split flags (the run\'s own split is used) or with those of the first run')


def _resume_state(args, model, optimizer, scheduler, scaler, path_rng, world_size, data_digest):
    """Continue from last.pth.tar: weights, optimizer, scaler (shared with stage 3), then the scheduler, the
    in-place zero gradients, the path sampler and every RNG. Returns the epochs finished."""
    ckpt, done = resume_training(args, model, optimizer, scaler,
                                 lambda c: _check_resumable(args, c, world_size, data_digest))
    scheduler.load_state_dict(ckpt['scheduler'])
    scheduler.T_max = args.epochs
    # Ops sampled before the crash had zero (not None) gradients: restore that so in-place zeroing keeps
    # applying weight decay and momentum to them exactly as an uninterrupted run would.
    params = dict(model.named_parameters())
    for name in ckpt.get('grad_mask', []):
        params[name].grad = torch.zeros_like(params[name])
    version, internal, gauss = ckpt['path_rng']
    path_rng.setstate((version, tuple(internal), gauss))
    set_rng_state(ckpt['rng'])
    old = ckpt.get('args', {})
    changed = [k for k in ('dataset', 'batch_size', 'learning_rate', 'seed', 'epochs', 'zero_grad', 'split_seed')
               if k in old and old[k] != getattr(args, k)]
    if changed:
        logger.warning('resuming with changed flags %s: the run will differ from an uninterrupted one',
                       ', '.join(f'{k} {old[k]} -> {getattr(args, k)}' for k in changed))
    return done


def _checkpoint_args(path):
    """The args of the stage-1 run that --resume names: from its last.pth.tar, or from its initial checkpoint when
    the run stopped before writing one ({} when neither is there)."""
    initial = os.path.join(os.path.dirname(path), INITIAL)
    found = path if os.path.isfile(path) else initial if os.path.isfile(initial) else None
    ckpt = load_checkpoint(found) if found else {}
    return ckpt.get('args', {}) if isinstance(ckpt, dict) else {}


def _start(args, model, optimizer, scheduler, scaler, path_rng, dist, data_digest):
    """Lock the run directory; resume state or fresh start; returns the first epoch. Refuses to overwrite an
    existing run. --resume of a run that stopped in its first epoch (no last.pth.tar) starts it over from its
    initial weights (checkpoint_epoch_0.pth.tar), which gives the uninterrupted run exactly."""
    start_epoch = 0
    initial = os.path.join(os.path.dirname(args.resume or ''), INITIAL)
    if args.resume and restarts_from_beginning(args.resume, LAST):
        if os.path.isfile(initial):
            load_state_checked(model, load_checkpoint(initial)['state_dict'], initial)
    elif args.resume:
        start_epoch = _resume_state(args, model, optimizer, scheduler, scaler, path_rng, dist.world_size,
                                    data_digest)
    claim_run_dir(dist, args.save, LAST, resuming=bool(args.resume))
    return start_epoch


def _save_epoch(run, args, epoch, model, optimizer, scheduler, scaler, path_rng, meta):
    state = {'epoch': epoch + 1, 'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
             'args': vars(args), **meta}
    if (epoch + 1) % args.save_freq == 0 or epoch + 1 == args.epochs:
        save_checkpoint(state, run.path / f'checkpoint_epoch_{epoch + 1}.pth.tar')
    state.update(scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=get_rng_state(),
                 path_rng=list(path_rng.getstate()),
                 grad_mask=[n for n, p in model.named_parameters() if p.grad is not None])
    save_checkpoint(state, run.path / LAST)


@locks_released
def main(args):
    dist = Dist()
    device = choose_device(args.device, dist.local_rank)
    seed_everything(args.seed + dist.rank)        # weights: DDP copies rank 0's to every rank
    if args.resume:                                   # the split the run started with, unless flags say otherwise
        inherit_split(args, _checkpoint_args(args.resume))
    data = load_search_data(args).resident(device)    # raises before anything is written
    fmt = memory_format(args.channels_last)
    model = get_space(args.space).build_supernet(args.init_channels, data.num_classes, args.layers)
    model = model.to(device).to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.learning_rate_min)
    scaler = make_scaler(device, args.amp)
    path_rng = random.Random(args.seed)           # the same on every rank: one path per step
    dist.init(device)
    start_epoch = _start(args, model, optimizer, scheduler, scaler, path_rng, dist, data.split_digest)

    run = Run(args.save, args, is_main=dist.is_main)
    meta = {**model_meta(args, data.num_classes), 'world_size': dist.world_size, **data.split_record()}
    logger.info('%s supernet C=%d layers=%d classes=%d: %d parameters; train %d / valid %d images of %s; %d '
                'process(es) on %s, batch %d per process, global batch %d', args.space, args.init_channels,
                args.layers, data.num_classes, sum(p.numel() for p in model.parameters()), len(data.train_idx),
                len(data.valid_idx), data.split.describe(), dist.world_size, device, args.batch_size,
                args.batch_size * dist.world_size)
    if dist.is_main and args.resume:
        run.truncate_metrics('epoch', start_epoch)      # lines written after the checkpoint (a crash in between)
        logger.info('resumed from %s after epoch %d', args.resume, start_epoch)
    if dist.is_main and start_epoch == 0:
        write_split_file(run.path / 'split.json', data.train_idx, data.valid_idx)
        if not (run.path / INITIAL).exists():       # a restarted run keeps (and was loaded from) its own
            save_checkpoint({'epoch': 0, 'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
                             'args': vars(args), **meta}, run.path / INITIAL)
    # Every rank trains the same path each step, so only that path's gradients are averaged; the
    # others stay None or keep their in-place zeros exactly as in one process.
    net = dist.wrap(model, device, find_unused_parameters=True)
    train_loader = BatchLoader(data.train, data.train_idx, args.batch_size, device, shuffle=True, augment=args.augment,
                               seed=derive_seed(args.seed, 'train'), memory_format=fmt, rank=dist.rank,
                               world_size=dist.world_size)
    valid_loader = BatchLoader(data.valid, data.valid_idx, args.batch_size, device, memory_format=fmt)
    criterion = nn.CrossEntropyLoss()
    record = {}
    trim_heap = HeapTrimmer(device, 0.0 if args.low_memory else args.rss_headroom)
    for epoch in range(start_epoch, args.epochs):
        if args.scheduler_step_first:
            scheduler.step()
        lr = optimizer.param_groups[0]['lr']
        train_loader.set_epoch(epoch)
        t0 = time.time()
        loss_sum, correct, seen = train_one_epoch(net, train_loader, optimizer, criterion, path_rng, args, epoch,
                                                  device, scaler, trim_heap)
        loss_sum, correct, seen = dist.all_reduce_sum([loss_sum, correct, seen], device)
        train_time = time.time() - t0
        if not args.scheduler_step_first:
            scheduler.step()
        require_finite_weights(model, f'in epoch {epoch + 1}', diverged_fix(args))     # every rank: same weights
        if dist.is_main:           # one random path, validated by rank 0 (its BN buffers are the saved ones)
            valid_loss, valid_acc = validate_random_paths(model, data, args, epoch, valid_loader, fmt)
            require_finite_loss(valid_loss, f'in epoch {epoch + 1}', diverged_fix(args), 'validation loss')
            record = {'epoch': epoch + 1, 'lr': lr, 'train_loss': loss_sum / seen, 'train_acc': correct / seen,
                      'valid_loss': valid_loss, 'valid_acc': valid_acc, 'epoch_time': time.time() - t0,
                      'images_per_s': seen / train_time}
            logger.info('epoch %d/%d lr %.5f train loss %.4f acc %.2f%% | valid loss %.4f acc %.2f%% | %.1fs, '
                        '%.0f img/s', epoch + 1, args.epochs, lr, record['train_loss'], 100 * record['train_acc'],
                        valid_loss, 100 * valid_acc, record['epoch_time'], record['images_per_s'])
            run.log_metrics(record, step=epoch + 1)
            _save_epoch(run, args, epoch, model, optimizer, scheduler, scaler, path_rng, meta)
        dist.barrier()
        if stop_requested(args, epoch, start_epoch, run.path / LAST):
            break
    run.close()
    dist.close()
    return record


if __name__ == '__main__':
    run_cli(main, parse_args)
