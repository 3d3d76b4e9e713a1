"""What stages 1 and 3 share to train a network: the train step, the epoch loop, the divergence checks,
--stop_after, and starting or continuing a run from a checkpoint (the "already finished" check, the claim of the
run directory, the state every resumable checkpoint holds). What differs (the scheduler, RNG streams, the path
sampling, the stage's own checks) stays in each stage.
"""
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

import inputs
import operations
from checkpoints import load_checkpoint, load_state_checked
from devices import amp_dtype
from seeding import get_rng_state
from utils import (UserError, check_new_run_dir, lock_run_dir, logger, progress, refuse_other_kind,
                   restarts_from_beginning)

# What a run recorded without a gradient form (made before the forms existed) ran: PyTorch's own kernels. A run made
# while the only choice was --dilated_conv (polyphase or direct) recorded it under that key.
UNRECORDED_GRAD_FORM = 'direct'
LEGACY_GRAD_FORM_KEY = 'dilated_conv'


def add_grad_form_flag(parser):
    """--grad_form, one help text for every stage that trains."""
    parser.add_argument('--grad_form', default=None, choices=operations.GRAD_FORMS,
                        help='how a CPU computes gradients where PyTorch\'s kernels are slow: dense (polyphase, and '
                             'each cell node gets a dense gradient of the concatenated cell output), polyphase (the '
                             'dil_conv ops through non-dilated kernels on polyphase components, several times faster '
                             'in the backward pass) or direct (PyTorch\'s kernels). The same forward; gradients equal '
                             'to float rounding. Default: dense for a new run; a resumed run keeps the form it '
                             'started with (direct for a run that recorded none). A GPU always runs direct')
    return parser


def recorded_grad_form(recorded):
    """The gradient form a run's record (its args or protocol, a dict) says it ran."""
    return recorded.get('grad_form') or recorded.get(LEGACY_GRAD_FORM_KEY) or UNRECORDED_GRAD_FORM


def use_grad_form(asked, recorded, what):
    """Switch to the gradient form of a run and return it: `asked` (the flag; None: not given), else the form in
    `recorded` (the run's recorded args, or None for a new run), else dense for a new run and direct for a recorded
    run without one. Asking another form than the run recorded warns: it will not equal an uninterrupted run.
    `what` names the run in that warning."""
    started = None if recorded is None else recorded_grad_form(recorded)
    form = asked or started or operations.GRAD_FORMS[0]
    if started is not None and form != started:
        logger.warning('WARNING: %s computed gradients as --grad_form %s; continuing with %s as asked: the run will '
                       'differ from an uninterrupted one in the last bits', what, started, form)
    operations.set_grad_form(form)
    return form


# A redirected run (log.txt, a batch job) prints a training line at least this often, whatever --report_freq says.
LOG_EVERY_S = 30.0

# The largest network shapes the training CLIs accept. Parameters grow with C squared: the DARTS network of 20
# cells has 3.3M at C=36 and 2.7 billion at C=1024 (tens of GB for weights, gradients and momentum), so a larger C
# or deeper stack is a typo that would otherwise end in a failed allocation of terabytes.
MAX_INIT_CHANNELS = 1024
MAX_LAYERS = 200
MEMORY_FIX = 'larger networks do not fit in memory; choose a smaller network'

# The range of every numeric training flag (the keywords of inputs.number); check_ranges checks those a CLI has.
FLAG_RANGES = {
    'seed': dict(lo=0, hi=inputs.SEED_MAX), 'split_seed': dict(lo=0, hi=inputs.SEED_MAX),
    'subset_seed': dict(lo=0, hi=inputs.SEED_MAX), 'sample_seed': dict(lo=0, hi=inputs.SEED_MAX),
    'init_channels': dict(lo=1, hi=MAX_INIT_CHANNELS, fix=MEMORY_FIX),
    'layers': dict(lo=1, hi=MAX_LAYERS, fix=MEMORY_FIX),
    'epochs': dict(lo=1), 'batch_size': dict(lo=2, fix='BatchNorm needs at least 2 images per batch'),
    'learning_rate': dict(lo=0, lo_open=True), 'learning_rate_min': dict(lo=0),
    'momentum': dict(lo=0, hi=1, hi_open=True), 'weight_decay': dict(lo=0), 'grad_clip': dict(lo=0, fix='0 is off'),
    'label_smooth': dict(lo=0, hi=1, hi_open=True), 'drop_path_prob': dict(lo=0, hi=1, hi_open=True),
    'auxiliary_weight': dict(lo=0, fix='a negative weight rewards a wrong auxiliary head'),
    'report_freq': dict(lo=1), 'save_freq': dict(lo=1), 'stop_after': dict(lo=0, fix='0 is off'),
    'valid_bn_images': dict(lo=0, fix='0 uses the running statistics'), 'valid_paths': dict(lo=1),
    'train_subset': dict(lo=0, fix='0 is all images'), 'valid_subset': dict(lo=0, fix='0 is all images'),
    'test_subset': dict(lo=0, fix='0 is all images'), 'cutout_length': dict(lo=0, fix='0 is off'),
    'warmup_epochs': dict(lo=0), 'seeds': dict(lo=1), 'workers': dict(lo=0),
}


def check_ranges(args):
    """UserError naming the first flag of FLAG_RANGES that args has (not None) outside its range."""
    inputs.numbers((f'--{k}', getattr(args, k), kw) for k, kw in FLAG_RANGES.items()
                   if getattr(args, k, None) is not None)


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
    infinity: called before saving, so that no checkpoint ever holds a diverged model. One reduction per
    device and one host sync for the whole model; the tensors are searched by name only after it failed."""
    floats = [(k, t) for k, t in module.state_dict().items() if t.is_floating_point()]
    if all_finite([t for _, t in floats]):
        return
    bad = [k for k, t in floats if not torch.isfinite(t).all()]
    raise UserError(f'{len(bad)} weight tensors became NaN or infinite {where} (e.g. {bad[0]}); nothing of this '
                    f'epoch was saved; {fix}')


def all_finite(tensors):
    """True when no tensor holds a NaN or an infinity: the per-tensor checks are queued on their device and
    stacked, and only one result per device is read back (one host-device sync for a model on one device)."""
    by_device = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    return all(torch.stack([torch.isfinite(t).all() for t in group]).all().item() for group in by_device.values())


def resume_hint(run_dir, checkpoint):
    """How to continue a run in run_dir: from its checkpoint when one exists, else from the beginning."""
    path = Path(run_dir) / checkpoint
    if path.exists():
        return f'resume from {path} (the last good checkpoint)'
    return f'rerun with --resume {run_dir} (no epoch was saved yet, so it starts over from the beginning)'


def backward_and_step(loss, optimizer, scaler, parameters, grad_clip, after_backward=None):
    """Backward through the (possibly disabled) scaler, after_backward() (stage 1 averages the gradients over
    the processes there), clip the gradient norm, step."""
    scaler.scale(loss).backward()
    if after_backward is not None:
        after_backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()


@dataclass(frozen=True)
class StepConfig:
    """What one SGD step needs besides the model, the batch and the optimizer."""
    grad_clip: float                   # gradient norm clip; 0: off
    amp: bool = False                  # autocast (bf16 where supported, else fp16 with the scaler)
    auxiliary_weight: float = 0.0      # weight of the auxiliary head's loss, for networks that have one
    set_to_none: bool = True           # zero_grad(set_to_none); False keeps zero gradients in place


class StepResult(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor


def train_step(model, x, y, optimizer, scaler, criterion, cfg, forward_args=(), after_backward=None):
    """One step: zero the gradients, forward model(x, *forward_args) (autocast with cfg.amp), cross-entropy plus
    the weighted auxiliary loss where the model returns (logits, logits_aux), backward, after_backward(), clip,
    step."""
    optimizer.zero_grad(set_to_none=cfg.set_to_none)
    with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=cfg.amp):
        out = model(x, *forward_args)         # through DDP / torch.compile when wrapped
        logits, logits_aux = out if isinstance(out, tuple) else (out, None)
        loss = criterion(logits, y)
        if logits_aux is not None:            # stage 3's networks in training mode with their auxiliary head
            loss = loss + cfg.auxiliary_weight * criterion(logits_aux, y)
    backward_and_step(loss, optimizer, scaler, model.parameters(), cfg.grad_clip, after_backward)
    return StepResult(logits, loss)


@dataclass(frozen=True)
class EpochConfig:
    """Where an epoch stands in its run and how it reports."""
    epoch: int                         # 0-based
    epochs: int
    report_freq: int                   # a log line (and a divergence check) every N steps
    fix: str                           # what the divergence error tells the user to do
    log_every_s: float = LOG_EVERY_S   # and a log line at least this often


class EpochResult(NamedTuple):
    """One epoch over all processes."""
    loss: float          # mean training loss per image
    acc: float           # top-1 on the (augmented) training batches
    images: int
    seconds: float       # of this process, from the first batch to the reduced sums


class Hooks(NamedTuple):
    """What a stage does around each step: forward_args() gives the model's extra forward arguments (stage 1:
    the path it samples), after_backward() runs between backward and the clip (stage 1: the gradients of that
    path averaged over the processes), after_step() after the optimizer step (stage 1: heap trimming)."""
    forward_args: Callable[[], tuple] = tuple
    after_step: Optional[Callable[[], None]] = None
    after_backward: Optional[Callable[[], None]] = None


class _Sums:
    """Loss, top-1 and images of this process; the sums stay on the device between reports."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0

    def add(self, logits, loss, y):
        self.loss += loss.detach().double() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def means(self):
        return self.loss.item() / self.seen, self.correct.item() / self.seen


def _report(sums, bar, cfg, step, total, check):
    """Log the running loss and top-1; with check, refuse a non-finite loss first."""
    avg, acc = sums.means()
    if check:
        require_finite_loss(avg, f'at epoch {cfg.epoch + 1} step {step}', cfg.fix)
    bar.set_postfix(loss=f'{avg:.3f}', acc=f'{100 * acc:.1f}%')
    logger.info('train epoch %d step %d/%d loss %.4f acc %.2f%%', cfg.epoch + 1, step, total, avg, 100 * acc)


def train_epoch(model, batches, total, optimizer, scaler, criterion, step_cfg, cfg, dist, device, hooks=Hooks()):
    """One training epoch of model over `batches` (total of them, (x, y) on the device): a log line and a
    divergence check every cfg.report_freq steps, a log line at least every cfg.log_every_s seconds (without the
    check: ranks reach it at different steps), then the sums reduced over all processes and checked."""
    model.train()
    sums, t0 = _Sums(device), time.time()
    last_log = time.monotonic()
    bar = progress(batches, is_main=dist.is_main, total=total, desc=f'epoch {cfg.epoch + 1}/{cfg.epochs}')
    for step, (x, y) in enumerate(bar, 1):
        out = train_step(model, x, y, optimizer, scaler, criterion, step_cfg, hooks.forward_args(),
                         hooks.after_backward)
        if hooks.after_step:
            hooks.after_step()
        sums.add(out.logits, out.loss, y)
        on_freq = step % cfg.report_freq == 0
        if on_freq or time.monotonic() - last_log >= cfg.log_every_s:
            _report(sums, bar, cfg, step, total, check=on_freq)
            last_log = time.monotonic()
    loss, correct, seen = dist.all_reduce_sum([sums.loss.item(), sums.correct.item(), sums.seen], device)
    require_finite_loss(loss, f'in epoch {cfg.epoch + 1}', cfg.fix)
    return EpochResult(loss / seen, correct / seen, int(seen), time.time() - t0)

class Resumed(NamedTuple):
    checkpoint: dict     # what --resume holds (the stage reads its scheduler, RNG states, best accuracy)
    epochs_done: int


def resume_training(args, model, optimizer, scaler, check, finished=lambda ckpt: ckpt['epoch'], ckpt=None):
    """Load the checkpoint --resume names (or `ckpt`, read from it already) into model, optimizer and (fp16)
    scaler, after check(ckpt) has raised the stage's own UserErrors (not its checkpoint, another shape or
    cell...). finished(ckpt): the epochs it has finished. Returns Resumed(checkpoint, epochs_done); UserError when
    no epoch is left."""
    ckpt = load_checkpoint(args.resume) if ckpt is None else ckpt
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


def claim_run_dir(dist, save, marker, resuming, kind):
    """Rank 0 locks the run directory as one of `kind` (utils.RUN_KINDS; another kind's directory is refused)
    and refuses to start a fresh run over an existing one (nothing is overwritten); every rank gets its verdict,
    so none writes before it. Call after the read-only checks."""
    dist.from_main(lambda: (lock_run_dir(save, kind), check_new_run_dir(save, marker, resuming)))


def start_run(args, dist, marker, resume, restart=None, fresh=0, kind=None):
    """The start both stages share: a --save directory of another kind of run than `kind` is refused first;
    --resume of a checkpoint `marker` gives resume()'s result (the stage loads it, e.g. through resume_training);
    --resume of a run that stopped before writing one calls restart() and starts over; else a fresh run. Then the
    run directory is claimed (fresh: refused over an existing run). Returns resume()'s result, else `fresh`."""
    refuse_other_kind(args.save, kind)
    result = fresh
    if args.resume and restarts_from_beginning(args.resume, marker):
        if restart is not None:
            restart()
    elif args.resume:
        result = resume()
    claim_run_dir(dist, args.save, marker, bool(args.resume), kind)
    return result


def note_resumed(run, args, start_epoch, detail=''):
    """Rank 0 of a resumed run: drop the metric lines written after its checkpoint (a crash in between) and
    say where it continues."""
    if run.is_main and args.resume:
        run.truncate_metrics('epoch', start_epoch)
        logger.info('resumed from %s after epoch %d%s', args.resume, start_epoch, detail)


def resumable_state(epochs_done, model, optimizer, scheduler, scaler, args, **extra):
    """What a checkpoint holds to continue exactly: weights (of the unwrapped model), optimizer, scheduler,
    (fp16) scaler, every RNG, the run's args, and the stage's own `extra`."""
    return {'epoch': epochs_done, 'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'rng': get_rng_state(),
            'args': vars(args), **extra}
