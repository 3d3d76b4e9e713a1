"""Stage 1's logic: the SPOS step and epoch (the shared loop with a fresh random path per step), the validation of
random paths, and a resumable run (checkpoints, the checks of --resume). The CLI is train_supernet/train.py."""
import itertools
import math
import os
import random
import time
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

import inputs
from checkpoints import load_state_checked, save_checkpoint
from data import BatchLoader, inherit_split, load_search_data, write_split_file
from devices import choose_device, make_scaler, memory_format
from distributed import Dist
from seeding import derive_seed, seed_everything, set_rng_state
from spaces import get_space
from spaces.supernet import evaluate_candidate
from heap import HeapTrimmer
from training import (EpochConfig, Hooks, StepConfig, note_resumed, require_finite_loss, require_finite_weights,
                      resumable_state, resume_hint, resume_training, start_run, stop_requested, train_epoch,
                      train_step, use_grad_form)
from utils import Run, UserError, changed_flags, logger, refuse_other_kind

LAST, INITIAL = 'last.pth.tar', 'checkpoint_epoch_0.pth.tar'
KIND = 'supernet'           # what a stage-1 run directory holds (utils.RUN_KINDS)


def model_meta(args, num_classes):
    """What stage 2 needs to rebuild the supernet from a checkpoint alone."""
    return {'init_channels': args.init_channels, 'layers': args.layers, 'num_classes': num_classes,
            'dataset': args.dataset, 'space': args.space}


def step_config(args):
    """--grad_clip, --amp, --zero_grad as the shared step takes them."""
    return StepConfig(args.grad_clip, args.amp, set_to_none=args.zero_grad == 'none')


def supernet_step(model, x, y, candidate, optimizer, scaler, criterion, cfg, space=None):
    """One SPOS step on one path (the shared step); `space` (None: DARTS) splits the candidate into the
    supernet's forward arguments. Returns StepResult(logits, loss)."""
    return train_step(model, x, y, optimizer, scaler, criterion, cfg, (space or get_space()).forward_args(candidate))


class SharedPath:
    """The path of each step, drawn from path_rng: the same on every rank (path_rng is seeded alike), so every rank
    knows which parameters get gradients. Under torchrun those are averaged over the ranks by one all-reduce
    (average_gradients) instead of DistributedDataParallel: plain DDP waits for gradients of every parameter
    and hangs on the ops a step did not sample, and with find_unused_parameters it walks the autograd graph
    each step and all-reduces every parameter, the unsampled ones as zeros. Ops not on the path keep their
    gradient (None, or the in-place zeros of --zero_grad inplace) exactly as in one process."""

    def __init__(self, model, path_rng, space, dist):
        self.model, self.path_rng, self.space, self.dist = model, path_rng, space, dist
        self.candidate = None

    def forward_args(self):
        self.candidate = self.space.random_candidate(self.path_rng)
        return self.space.forward_args(self.candidate)

    def average_gradients(self):
        self.dist.average_gradients(self.model.path_parameters(self.candidate))


def train_supernet_epoch(net, loader, optimizer, scaler, criterion, path_rng, space, step_cfg, cfg, dist, device,
                         trim_heap=None):
    """One epoch of SPOS through the shared loop: every step a fresh uniformly random (repaired) path drawn from
    path_rng (the same on every rank), its gradients averaged over the ranks (SharedPath); trim_heap (a
    HeapTrimmer) after each step. Returns its EpochResult."""
    path = SharedPath(net, path_rng, space, dist)
    hooks = Hooks(forward_args=path.forward_args, after_step=trim_heap,
                  after_backward=path.average_gradients if dist.enabled else None)
    return train_epoch(net, loader, len(loader), optimizer, scaler, criterion, step_cfg, cfg, dist, device, hooks)


def diverged_fix(save):
    return f'lower --learning_rate or --grad_clip and {resume_hint(save, LAST)}'


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
    return sum(r.loss for r in results) / len(results), sum(r.acc for r in results) / len(results)


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
    """UserError unless ckpt (of LAST_KEYS, read_resume checked them) is a stage-1 last.pth.tar of this space,
    process count and split."""
    if ckpt.get('space', 'darts') != args.space:
        raise UserError(f'{args.resume} is a {ckpt.get("space", "darts")} supernet; resume it with --space '
                        f'{ckpt.get("space", "darts")}')
    _check_world_size(args, ckpt.get('world_size'), world_size)
    if ckpt.get('split_digest', data_digest) != data_digest:
        raise UserError(f'{args.resume} was trained on {ckpt.get("split")}, not on the split these flags give; resume '
                        'without split flags (the run\'s own split is used) or with those of the first run')


# The flags whose change makes a resumed run differ from an uninterrupted one (warned about, not refused).
RESUME_FLAGS = ('dataset', 'batch_size', 'learning_rate', 'seed', 'epochs', 'zero_grad', 'split_seed')


# What a resumable last.pth.tar holds (resumable_state plus the path sampler) and what every stage-1 checkpoint does.
LAST_KEYS = {'epoch': int, 'state_dict': dict, 'optimizer': dict, 'scheduler': dict, 'rng': dict,
             'path_rng': (list, tuple)}
INITIAL_KEYS = {'state_dict': dict}


class Resume(NamedTuple):
    """The checkpoints of the run --resume names, read and checked before anything is built or written."""
    last: Optional[dict]         # its last.pth.tar (None: the run stopped in its first epoch)
    initial: Optional[dict]      # else its checkpoint_epoch_0.pth.tar, where there is one

    @property
    def args(self):
        """The run's recorded flags ({} where neither checkpoint holds them)."""
        found = (self.last or self.initial or {}).get('args', {})
        return found if isinstance(found, dict) else {}


def read_resume(path):
    """Resume of --resume `path`: a path that exists must be a readable stage-1 last.pth.tar of LAST_KEYS (a
    folder or a file of another stage in its place is refused); a missing one (a run that stopped in its first
    epoch, see training.start_run) gives the checkpoint_epoch_0.pth.tar next to it, checked alike."""
    if os.path.lexists(path):
        return Resume(inputs.checkpoint('--resume', path, LAST_KEYS, f'a resumable stage-1 checkpoint ({LAST})',
                                        inside=LAST), None)
    initial = os.path.join(os.path.dirname(path), INITIAL)
    if not os.path.lexists(initial):
        return Resume(None, None)
    return Resume(None, inputs.checkpoint('--resume', initial, INITIAL_KEYS, f'a stage-1 checkpoint ({INITIAL})'))


class SupernetRun:
    """One stage-1 run: built from the flags (nothing written yet), then start() (resume or fresh start, claim
    the run directory, the initial checkpoint), then train() (the epochs, each validated and saved by rank 0)."""

    def __init__(self, args):
        self.args, self.dist = args, Dist()
        refuse_other_kind(args.save, KIND)                 # before any work: a search or retrain run is not resumed
        self.resumed = read_resume(args.resume) if args.resume else Resume(None, None)
        recorded = self.resumed.args if (self.resumed.last or self.resumed.initial) else None
        args.grad_form = use_grad_form(args.grad_form, recorded, args.resume)
        self.device = choose_device(args.device, self.dist.local_rank, deterministic=args.deterministic)
        seed_everything(args.seed + self.dist.rank)        # weights: DDP copies rank 0's to every rank
        if args.resume:                                    # the split the run started with, unless flags say otherwise
            inherit_split(args, self.resumed.args)
        self.data = load_search_data(args).resident(self.device)    # raises before anything is written
        self.fmt = memory_format(args.channels_last)
        self.space = get_space(args.space)
        model = self.space.build_supernet(args.init_channels, self.data.num_classes, args.layers)
        self.model = model.to(self.device).to(memory_format=self.fmt)
        self.optimizer = torch.optim.SGD(self.model.parameters(), args.learning_rate, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, args.epochs,
                                                                    eta_min=args.learning_rate_min)
        self.scaler = make_scaler(self.device, args.amp)
        self.path_rng = random.Random(args.seed)           # the same on every rank: one path per step
        self.dist.init(self.device)
        self.meta = {**model_meta(args, self.data.num_classes), 'world_size': self.dist.world_size,
                     **self.data.split_record()}

    def _resume(self):
        """Continue from last.pth.tar: weights, optimizer, scaler (shared with stage 3), then the scheduler, the
        in-place zero gradients, the path sampler and every RNG. Returns the epochs finished."""
        args = self.args
        ckpt, done = resume_training(args, self.model, self.optimizer, self.scaler, lambda c: _check_resumable(
            args, c, self.dist.world_size, self.data.split_digest), ckpt=self.resumed.last)
        self.scheduler.load_state_dict(ckpt['scheduler'])
        self.scheduler.T_max = args.epochs
        # Ops sampled before the crash had zero (not None) gradients: restore that so in-place zeroing keeps
        # applying weight decay and momentum to them exactly as an uninterrupted run would.
        params = dict(self.model.named_parameters())
        for name in ckpt.get('grad_mask', []):
            params[name].grad = torch.zeros_like(params[name])
        version, internal, gauss = ckpt['path_rng']
        self.path_rng.setstate((version, tuple(internal), gauss))
        set_rng_state(ckpt['rng'])
        changed = changed_flags(ckpt.get('args', {}), {k: getattr(args, k) for k in RESUME_FLAGS})
        if changed:
            logger.warning('resuming with changed flags %s: the run will differ from an uninterrupted one',
                           ', '.join(changed))
        return done

    def _restart(self):
        """--resume of a run that stopped in its first epoch (no last.pth.tar): its initial weights
        (checkpoint_epoch_0.pth.tar), which gives the uninterrupted run exactly."""
        if self.resumed.initial is not None:
            initial = os.path.join(os.path.dirname(self.args.resume), INITIAL)
            load_state_checked(self.model, self.resumed.initial['state_dict'], initial)

    def start(self):
        """Resume or start fresh (refused over an existing run), open the run directory; the first epoch."""
        args, dist, data = self.args, self.dist, self.data
        self.start_epoch = start_run(args, dist, LAST, self._resume, self._restart, kind=KIND)
        self.run = Run(args.save, args, is_main=dist.is_main)
        logger.info('%s supernet C=%d layers=%d classes=%d: %d parameters; train %d / valid %d images of %s; %d '
                    'process(es) on %s, batch %d per process, global batch %d', args.space, args.init_channels,
                    args.layers, data.num_classes, sum(p.numel() for p in self.model.parameters()),
                    len(data.train_idx), len(data.valid_idx), data.split.describe(), dist.world_size, self.device,
                    args.batch_size, args.batch_size * dist.world_size)
        note_resumed(self.run, args, self.start_epoch)
        if dist.is_main and self.start_epoch == 0:
            write_split_file(self.run.path / 'split.json', data.train_idx, data.valid_idx)
            if not (self.run.path / INITIAL).exists():       # a restarted run keeps (and was loaded from) its own
                save_checkpoint(self._state(0), self.run.path / INITIAL)
        return self.start_epoch

    def _state(self, epochs_done):
        """What every stage-1 checkpoint holds: weights, optimizer, args and what stage 2 rebuilds it from."""
        return {'epoch': epochs_done, 'state_dict': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'args': vars(self.args), **self.meta}

    def _save_epoch(self, epoch):
        """checkpoint_epoch_N every --save_freq epochs and at the end; last.pth.tar (everything to resume)."""
        args = self.args
        if (epoch + 1) % args.save_freq == 0 or epoch + 1 == args.epochs:
            save_checkpoint(self._state(epoch + 1), self.run.path / f'checkpoint_epoch_{epoch + 1}.pth.tar')
        state = resumable_state(epoch + 1, self.model, self.optimizer, self.scheduler, self.scaler, args, **self.meta,
                                path_rng=list(self.path_rng.getstate()),
                                grad_mask=[n for n, p in self.model.named_parameters() if p.grad is not None])
        save_checkpoint(state, self.run.path / LAST)

    def train(self):
        """Epochs start_epoch .. --epochs (or --stop_after); rank 0's record of the last one ({} elsewhere)."""
        args, dist, device = self.args, self.dist, self.device
        # Not wrapped in DistributedDataParallel: every rank trains the same path each step, and SharedPath
        # averages that path's gradients. The ranks start from rank 0's weights, as DDP would give them.
        dist.broadcast_module(self.model)
        net = self.model
        train_loader = BatchLoader(self.data.train, self.data.train_idx, args.batch_size, device, shuffle=True,
                                   augment=args.augment, seed=derive_seed(args.seed, 'train'), memory_format=self.fmt,
                                   rank=dist.rank, world_size=dist.world_size)
        valid_loader = BatchLoader(self.data.valid, self.data.valid_idx, args.batch_size, device,
                                   memory_format=self.fmt)
        trim_heap = HeapTrimmer(device, 0.0 if args.low_memory else args.rss_headroom)
        record = {}
        for epoch in range(self.start_epoch, args.epochs):
            record = self._epoch(epoch, net, train_loader, valid_loader, trim_heap)
            dist.barrier()
            if stop_requested(args, epoch, self.start_epoch, self.run.path / LAST):
                break
        self.run.close()
        dist.close()
        return record

    def _epoch(self, epoch, net, train_loader, valid_loader, trim_heap):
        """Train one epoch, step the schedule, check the weights; rank 0 validates, logs and saves."""
        args = self.args
        if args.scheduler_step_first:
            self.scheduler.step()
        lr = self.optimizer.param_groups[0]['lr']
        train_loader.set_epoch(epoch)
        t0 = time.time()
        cfg = EpochConfig(epoch, args.epochs, args.report_freq, diverged_fix(args.save))
        out = train_supernet_epoch(net, train_loader, self.optimizer, self.scaler, nn.CrossEntropyLoss(),
                                   self.path_rng, self.space, step_config(args), cfg, self.dist, self.device, trim_heap)
        if not args.scheduler_step_first:
            self.scheduler.step()
        require_finite_weights(self.model, f'in epoch {epoch + 1}', cfg.fix)     # every rank: same weights
        if not self.dist.is_main:
            return {}
        # One random path, validated by rank 0 (its BN buffers are the saved ones).
        valid_loss, valid_acc = validate_random_paths(self.model, self.data, args, epoch, valid_loader, self.fmt)
        require_finite_loss(valid_loss, f'in epoch {epoch + 1}', cfg.fix, 'validation loss')
        record = {'epoch': epoch + 1, 'lr': lr, 'train_loss': out.loss, 'train_acc': out.acc,
                  'valid_loss': valid_loss, 'valid_acc': valid_acc, 'epoch_time': time.time() - t0,
                  'images_per_s': out.images / out.seconds}
        logger.info('epoch %d/%d lr %.5f train loss %.4f acc %.2f%% | valid loss %.4f acc %.2f%% | %.1fs, '
                    '%.0f img/s', epoch + 1, args.epochs, lr, out.loss, 100 * out.acc, valid_loss, 100 * valid_acc,
                    record['epoch_time'], record['images_per_s'])
        self.run.log_metrics(record, step=epoch + 1)
        self._save_epoch(epoch)
        return record
