"""What stages 1 and 3 share to train a network: the backward/clip/step, the divergence checks, --stop_after,
and starting or continuing a run from a checkpoint (the "already finished" check and the claim of the run
directory). What differs (the scheduler, RNG streams, the stage's own checks) stays in each stage.
"""
import math
from pathlib import Path
from typing import NamedTuple

import torch

from checkpoints import load_checkpoint, load_state_checked
from utils import UserError, check_new_run_dir, lock_run_dir, logger


def stop_requested(args, epoch, start_epoch, resume_path):
    """--stop_after N: True (and say how to continue) once this invocation has run N epochs, unless the
    run is finished anyway."""
    if args.stop_after and epoch + 1 - start_epoch >= args.stop_after and epoch + 1 < args.epochs:
        logger.info('stopping after %d epochs as asked (--stop_after); continue with --resume %s',
                    args.stop_after, resume_path)
        return True
    return False


def require_finite_loss(loss, where, fix, what='training loss'):
    """UserError naming where a (training or validation) loss became NaN or infinite, and what to do."""
    if not math.isfinite(loss):
        raise UserError(f'{what} became {loss} {where}; nothing of this epoch was saved; {fix}')


def require_finite_weights(module, where, fix):
    """UserError when any floating tensor of module.state_dict() (weights, BN statistics) holds a NaN or an
    infinity: called before saving, so that no checkpoint ever holds a diverged model."""
    bad = [k for k, t in module.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f'{len(bad)} weight tensors became NaN or infinite {where} (e.g. {bad[0]}); nothing of this '
                        f'epoch was saved; {fix}')


def resume_hint(run_dir, checkpoint):
    """How to continue a run in run_dir: from its checkpoint when one exists, else from the beginning."""
    path = Path(run_dir) / checkpoint
    if path.exists():
        return f'resume from {path} (the last good checkpoint)'
    return f'rerun with --resume {run_dir} (no epoch was saved yet, so it starts over from the beginning)'


def backward_and_step(loss, optimizer, scaler, parameters, grad_clip):
    """Backward through the (possibly disabled) scaler, clip the gradient norm, step."""
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()



class Resumed(NamedTuple):
    checkpoint: dict     # what --resume holds (the stage reads its scheduler, RNG states, best accuracy)
    epochs_done: int


def resume_training(args, model, optimizer, scaler, check, finished=lambda ckpt: ckpt['epoch']):
    """Load the checkpoint --resume names into model, optimizer and (fp16) scaler, after check(ckpt) has
    raised the stage's own UserErrors (not its checkpoint, another shape or cell...). finished(ckpt): the
    epochs it has finished. Returns Resumed(checkpoint, epochs_done); UserError when no epoch is left."""
    ckpt = load_checkpoint(args.resume)
    check(ckpt)
    load_state_checked(model, ckpt['state_dict'], args.resume)
    if 'optimizer' in ckpt:                      # the reference's stage-3 checkpoints hold it too; ours always
        optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt.get('scaler') and scaler.is_enabled():
        scaler.load_state_dict(ckpt['scaler'])
    done = finished(ckpt)
    if done >= args.epochs:
        raise UserError(f'{args.resume} already finished {done} epochs; raise --epochs to train further')
    return Resumed(ckpt, done)


def claim_run_dir(dist, save, marker, resuming):
    """Rank 0 locks the run directory and refuses to start a fresh run over an existing one (nothing is
    overwritten); every rank gets its verdict, so none writes before it. Call after the read-only checks."""
    dist.from_main(lambda: (lock_run_dir(save), check_new_run_dir(save, marker, resuming)))
