"""Stage 3's run around the shared loop (retrain/train_loop.py): the schedule, the network of a genotype, the
start or resume of a run directory, the per-epoch bookkeeping (best top-1, metrics, checkpoints) and
--evaluate. The CLI is retrain/retrain.py."""
import json
import math
import os
from typing import NamedTuple, Optional

import torch

import data
import genotypes
import inputs
from checkpoints import load_state_checked, save_checkpoint
from counting import count_macs, count_parameters
from retrain.drawing import plot_genotype
from retrain.train_loop import CHECKPOINT, EpochPlan, Nets, Protocol, diverged_fix, evaluate, make_training, \
    train_network
from seeding import derive_seed
from spaces import get_space
from training import note_resumed, resumable_state, resume_training, start_run, stop_requested
from utils import Run, UserError, logger, setup_logging

BEST = 'model_best.pth.tar'
KIND = 'retrain'            # what a stage-3 run directory holds (utils.RUN_KINDS)
# What a stage-3 checkpoint to resume holds at least (the reference's hold these, best_acc_top1 and optimizer too).
RESUME_KEYS = {'state_dict': dict, 'epoch': int}


class Given(NamedTuple):
    """The checkpoint --resume or --evaluate names, read and checked before anything is built or written."""
    resume: Optional[dict] = None
    evaluate: Optional[dict] = None       # the state dict to validate


def _finite_state(path, state):
    """state unless a floating tensor of it holds a NaN or an infinity (a diverged model)."""
    bad = [k for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f'--evaluate {path} holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): it is a '
                        'diverged model; pass the checkpoint of a run that trained without diverging')
    return state


def read_given(args):
    """Given of the flags: --resume that exists must be a readable stage-3 checkpoint of RESUME_KEYS (a missing
    one is a run that stopped before its first epoch, see training.start_run); --evaluate a readable checkpoint
    (ours or the reference's model zoo file, which may be a bare state dict) with finite weights."""
    if args.resume and os.path.lexists(args.resume):
        return Given(resume=inputs.checkpoint('--resume', args.resume, RESUME_KEYS,
                                              f'a stage-3 checkpoint ({CHECKPOINT})', inside=CHECKPOINT))
    if args.evaluate:
        ckpt = inputs.checkpoint('--evaluate', args.evaluate, {}, f'a stage-3 checkpoint ({BEST})', inside=BEST)
        state = ckpt.get('state_dict', ckpt)
        if not isinstance(state, dict):
            raise UserError(f'--evaluate {args.evaluate}: its state_dict entry is a {type(state).__name__}, not a '
                            'dict of tensors; pass a stage-3 checkpoint')
        return Given(evaluate=_finite_state(args.evaluate, state))
    return Given()


def lr_factor(args):
    """Multiplier of the base learning rate at epoch e: cosine, or the reference's linear decay with its last
    five epochs at a fifth of the slope, each after --warmup_epochs of linear warm-up."""
    E, W = args.epochs, args.warmup_epochs

    def factor(e):
        if args.lr_scheduler == 'cosine':
            f = 0.5 * (1 + math.cos(math.pi * e / E))
        elif E - e > 5:
            f = (E - 5 - e) / max(E - 5, 1)
        else:
            f = (E - e) / (max(E - 5, 1) * 5)
        return f * (e + 1) / W if e < W else f
    return factor


def image_size(dataset):
    """Side of the network's input: 224 for ImageNet (after cropping), the stored size otherwise."""
    return 224 if dataset == 'imagenet' else data.IMAGE_SIZES.get(dataset, 32)


def build_model(args, num_classes, genotype, auxiliary=None):
    aux = args.auxiliary if auxiliary is None else auxiliary
    return get_space('darts').network(genotype, args.init_channels, num_classes, args.layers, aux,
                                      imagenet=args.dataset == 'imagenet')


def describe(model, args, genotype, device):
    """Log the genotype, parameters without the auxiliary head and multiply-adds for one input."""
    size = image_size(args.dataset)
    macs = count_macs(model, torch.zeros(1, 3, size, size, device=device))
    params = count_parameters(model)
    logger.info('genotype %s', genotype)
    logger.info('params (without auxiliary head) %.3fM, multiply-adds %.1fM for one %dx%d image',
                params / 1e6, macs / 1e6, size, size)
    return params, macs


def draw_cells(run, genotype):
    written = plot_genotype(genotype, run.path / 'cell')
    if run.tb is not None:
        run.tb.add_text('genotype', str(genotype))
        for which, paths in written.items():
            png = [p for p in paths if p.suffix == '.png']
            if png:
                from torchvision.io import read_image
                run.tb.add_image(f'cell/{which}', read_image(str(png[0]))[:3], 0)


def compile_model(module, args):
    """torch.compile(module) with --compile, else module itself. A retrained cell is fixed, so each mode
    (training without / with drop path, evaluation) compiles once for the whole run. The compiled wrapper
    only runs the module: state dicts are read from and loaded into the module itself (no `_orig_mod.`)."""
    return torch.compile(module) if args.compile else module


def run_evaluate(args, model, loaders, device, dist, state):
    """--evaluate: validate `state` (read_given's, of a checkpoint of ours or the reference's) and print one JSON
    line."""
    setup_logging(None, dist.is_main)
    load_state_checked(model, state, args.evaluate)
    protocol = Protocol.from_args(args)
    result = evaluate(compile_model(model, args), loaders.val, device, dist, protocol.amp, protocol.memory_format)
    if dist.is_main:
        print(json.dumps({'checkpoint': str(args.evaluate), **result}), flush=True)
        logger.info('evaluate %s: top1 %.4f top5 %.4f loss %.4f (%d images)', args.evaluate, result['val_top1'],
                    result['val_top5'], result['val_loss'], result['val_images'])
    dist.close()
    return result


def finished_epochs(ckpt):
    """Epochs a retrain checkpoint has finished. Ours store that number with the run's args; the reference's
    (keys epoch, state_dict, best_acc_top1, optimizer only) store the 0-based index of the last finished one."""
    return ckpt['epoch'] if 'args' in ckpt or 'scheduler' in ckpt else ckpt['epoch'] + 1


def check_retrain_checkpoint(args, ckpt):
    """UserError unless ckpt (of RESUME_KEYS, read_given checked them) is a stage-3 checkpoint (ours or the
    reference's) of the cell --arch names."""
    saved = ckpt.get('genotype')
    if saved is not None and genotypes.genotype_from_dict(saved) != genotypes.resolve_genotype(args.arch):
        trained = ckpt.get('args', {}).get('arch', 'another cell')
        raise UserError(f'{args.resume} was trained with --arch {trained}, not {args.arch}; pass --arch {trained} '
                        'to resume it, or choose another --save to train this cell')


def resume_state(args, state, ckpt):
    """Restore what checkpoint `ckpt` (of --resume) holds; the reference's hold weights, optimizer and epoch only.
    Returns (epochs finished, best top-1)."""
    ckpt, done = resume_training(args, state.model, state.optimizer, state.scaler,
                                 lambda c: check_retrain_checkpoint(args, c), finished_epochs, ckpt)
    state.scheduler.last_epoch = done - 1
    state.scheduler.step()                         # sets the learning rate of epoch `done` (0-based)
    best = ckpt.get('best_acc_top1', 0.0)
    return done, float(best.item() if torch.is_tensor(best) else best)


def begin(args, genotype, loaders, device, dist, state, ckpt):
    """Resume from `ckpt` (or start fresh), claim the run directory and describe the run. Returns (run, first
    epoch, best top-1 so far)."""
    start_epoch, best_acc = start_run(args, dist, CHECKPOINT, lambda: resume_state(args, state, ckpt),
                                      fresh=(0, 0.0), kind=KIND)
    run = Run(args.save, args, is_main=dist.is_main)
    describe(state.model, args, genotype, device)
    logger.info('%d process(es) on %s, global batch %d (%d per process), %d train / %d val images%s',
                dist.world_size, device, args.batch_size, args.batch_size // dist.world_size,
                loaders.train_images, loaders.val_images, ', compiled' if args.compile else '')
    if dist.is_main:
        draw_cells(run, genotype)
    note_resumed(run, args, start_epoch, f' (best top1 {best_acc:.4f})')
    return run, start_epoch, best_acc


class Bookkeeping:
    """After each epoch: the best top-1 so far, the log line, metrics.jsonl, the checkpoints, --stop_after."""

    def __init__(self, run, args, state, genotype, best_acc, start_epoch, dist):
        self.run, self.args, self.state, self.genotype, self.dist = run, args, state, genotype, dist
        self.best_acc, self.start_epoch = best_acc, start_epoch

    def __call__(self, record):
        epoch, args = record['epoch'] - 1, self.args
        is_best = record['val_top1'] >= self.best_acc
        self.best_acc = record['best_top1'] = max(self.best_acc, record['val_top1'])
        logger.info('epoch %d/%d lr %.5f train loss %.4f acc %.2f%% | val loss %.4f top1 %.2f%% top5 %.2f%% | '
                    '%.1fs, %.0f img/s', epoch + 1, args.epochs, record['lr'], record['train_loss'],
                    100 * record['train_acc'], record['val_loss'], 100 * record['val_top1'],
                    100 * record['val_top5'], record['epoch_time'], record['images_per_s'])
        self.run.log_metrics(record, step=epoch + 1)
        if self.dist.is_main:
            self.save(epoch, is_best)
        return stop_requested(args, epoch, self.start_epoch, self.run.path / CHECKPOINT)

    def save(self, epoch, is_best):
        """Rank 0: model_best.pth.tar when this epoch is the best, then checkpoint.pth.tar (everything to
        resume), both from the uncompiled, unwrapped model."""
        s = self.state
        state = resumable_state(epoch + 1, s.model, s.optimizer, s.scheduler, s.scaler, self.args,
                                best_acc_top1=self.best_acc, genotype=genotypes.genotype_to_dict(self.genotype))
        if is_best:                     # before the checkpoint: a crash in between redoes this epoch
            save_checkpoint({k: state[k] for k in ('epoch', 'state_dict', 'best_acc_top1', 'args', 'genotype')},
                            self.run.path / BEST)
        save_checkpoint(state, self.run.path / CHECKPOINT)


def make_nets(args, model, device, dist):
    train_net = compile_model(dist.wrap(model, device), args)
    val_net = train_net if not dist.enabled else compile_model(model, args)   # one process: the same wrapper
    return Nets(train_net, val_net)


def train(args, model, genotype, loaders, device, dist, ckpt=None):
    """The training run (resumable, from `ckpt`, read_given's of --resume): epochs from the checkpoint's to
    --epochs (or --stop_after)."""
    protocol = Protocol.from_args(args)
    state = make_training(model, protocol, device, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(args)))
    run, start_epoch, best_acc = begin(args, genotype, loaders, device, dist, state, ckpt)
    plan = EpochPlan(epoch_seed=lambda e: derive_seed(args.seed, 'epoch', e, dist.rank),   # drop path, workers
                     fix=diverged_fix(args.save), start_epoch=start_epoch,
                     after_epoch=Bookkeeping(run, args, state, genotype, best_acc, start_epoch, dist))
    record = train_network(state, make_nets(args, model, device, dist), loaders, protocol, plan, dist, device)
    run.close()
    dist.barrier()
    dist.close()
    return record
