"""Starting or continuing a training run, shared by stage 1 (train_supernet/train.py) and stage 3
(retrain/retrain.py): what both restore the same way from a checkpoint, the "already finished" check, and
the claim of the run directory. What differs (the scheduler, RNG streams, the stage's own checks) stays
in each stage.
"""
from typing import NamedTuple

from utils import UserError, check_new_run_dir, load_checkpoint, load_state_checked, lock_run_dir


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
