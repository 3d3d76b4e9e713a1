"""Shared plumbing for the three stages: errors and CLI exit codes, run directories (log.txt,
args.json, metrics.jsonl, TensorBoard), seeding and RNG state, devices and torchrun, atomic
checkpoints, accuracy, parameter and multiply-add counts.
"""
import argparse
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import pickle
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from genotypes import GenotypeError

logger = logging.getLogger('genas')


# --- errors a user can cause --------------------------------------------------------------------

class UserError(Exception):
    """Bad input the user can fix (flag value, data, checkpoint). The message names the fix."""


def run_cli(main, parse_args, argv=None):
    """Parse, run `main(args)`; a UserError / GenotypeError ends with one line and exit status 2."""
    try:
        args = parse_args(argv)
        return main(args)
    except (UserError, GenotypeError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) and defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('formatter_class', argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f'error: {message} (see {self.prog} --help)', file=sys.stderr)
        sys.exit(2)


def add_noop_flags(parser, flags):
    """Accept the reference's flags that mean nothing here, so that its command lines run unchanged
    (`pop_noop_flags` warns about them). flags: {name: type}, type None for a switch."""
    g = parser.add_argument_group('reference flags without effect here (accepted with a warning)')
    for name, kind in flags.items():
        extra = dict(action='store_true') if kind is None else dict(type=kind, metavar=name.upper())
        g.add_argument(f'--{name}', dest=f'noop_{name}', default=None, help='does nothing here', **extra)


def pop_noop_flags(args):
    """Remove the no-op flags from args; one warning line on stderr (rank 0) names those given."""
    given = [k[len('noop_'):] for k, v in vars(args).items() if k.startswith('noop_') and v is not None]
    for k in [k for k in vars(args) if k.startswith('noop_')]:
        delattr(args, k)
    if given and int(os.environ.get('RANK', 0)) == 0:
        print(f'warning: {" ".join("--" + g for g in given)}: flag(s) of the reference that do nothing here '
              '(accepted so that its command lines run unchanged)', file=sys.stderr)
    return given


def progress(iterable, is_main=True, **kwargs):
    """A tqdm bar on the main process when stderr is a terminal (log lines carry progress otherwise)."""
    from tqdm import tqdm
    return tqdm(iterable, disable=None if is_main else True, dynamic_ncols=True, leave=False, **kwargs)


def require(checks):
    """Raise UserError with the message of the first (ok, message) pair that is not ok."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def resolve_run_paths(args, checkpoint_name, prefix):
    """--resume DIR means DIR/<checkpoint_name>; --save defaults to the resumed run's directory, else to
    runs/<prefix>-<time>."""
    if args.resume and os.path.isdir(args.resume):
        args.resume = os.path.join(args.resume, checkpoint_name)
    if args.save is None:
        args.save = os.path.dirname(args.resume) if args.resume else default_run_dir(prefix)
    return args


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


def parse_stds(text):
    """'0.001,0.003,0.006' -> [0.001, 0.003, 0.006]; positive and strictly increasing, or UserError."""
    try:
        stds = [float(s) for s in str(text).replace(' ', '').split(',') if s != '']
    except ValueError:
        raise UserError(f'--stds must be comma-separated numbers like 0.001,0.003,0.006, got {text!r}')
    if not stds:
        raise UserError('--stds is empty; give at least one std, e.g. --stds 0.001,0.003,0.006')
    if stds[0] <= 0 or any(b <= a for a, b in zip(stds, stds[1:])) or not all(map(math.isfinite, stds)):
        raise UserError(f'--stds must be positive and strictly increasing (e.g. 0.001,0.003,0.006), got {text!r}')
    return stds


# --- run directory: logs, args, metrics, TensorBoard ----------------------------------------------

class _TqdmHandler(logging.StreamHandler):
    """Console handler (stderr, so stdout carries only results) that prints through tqdm so log lines do
    not break progress bars."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:   # pragma: no cover - logging must never raise
            self.handleError(record)


class _LogFileHandler(logging.FileHandler):
    """log.txt. A write error (a full disk) stops it with one warning instead of a traceback per log line; the
    write that fails next (a checkpoint, metrics) ends the run with the error."""

    def handleError(self, record):
        logger.removeHandler(self)
        sys.stderr.write(f'warning: stopped writing {self.baseFilename} (a write failed: disk full?)\n')


def setup_logging(log_file=None, is_main=True):
    """Console (and log.txt) logging for the `genas` logger; non-main ranks only warn."""
    logger.handlers.clear()
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter('%(asctime)s %(message)s', datefmt='%m/%d %H:%M:%S')
    console = _TqdmHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file is not None and is_main:
        fh = _LogFileHandler(log_file, mode='a')
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def default_run_dir(prefix):
    return os.path.join('runs', f'{prefix}-{time.strftime("%Y%m%d-%H%M%S")}')


class Run:
    """One run directory: log.txt, args.json, metrics.jsonl and TensorBoard events under tb/.

    Only the main process writes; the others get a Run whose writers do nothing.
    """

    def __init__(self, path, args, is_main=True, tensorboard=True):
        self.path = Path(path)
        self.is_main = is_main
        self._tb = None
        if is_main:
            lock_run_dir(self.path)                # a no-op where the stage took the lock already
            atomic_write_text(self.path / 'args.json', json.dumps(vars(args), indent=2, default=str))
        setup_logging(self.path / 'log.txt' if is_main else None, is_main)
        if is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.path / 'tb'))

    @property
    def metrics_file(self):
        return self.path / 'metrics.jsonl'

    def log_metrics(self, record, step=None, prefix=''):
        """Append one JSON line; numeric values also go to TensorBoard at `step`."""
        if not self.is_main:
            return
        append_line(self.metrics_file, json.dumps(record))
        if self._tb is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != 'epoch':
                    self._tb.add_scalar(f'{prefix}{k}', v, step)
            self._tb.flush()

    def truncate_metrics(self, key, last):
        """On resume: drop metric lines with record[key] > last (written after the checkpoint)."""
        if not self.is_main or not self.metrics_file.exists():
            return
        kept = [json.dumps(r) for r in read_metrics(self.metrics_file) if r.get(key, -math.inf) <= last]
        atomic_write_text(self.metrics_file, ''.join(ln + '\n' for ln in kept))

    @property
    def tb(self):
        return self._tb

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path):
    """All records of a metrics.jsonl file (a last line cut short by a crash is left out)."""
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    records = []
    for i, ln in enumerate(lines):
        try:
            records.append(json.loads(ln))
        except ValueError:
            if i + 1 < len(lines):
                raise
    return records


def check_new_run_dir(path, marker, resuming):
    """Refuse to start a fresh run over an existing one (nothing gets overwritten), including one that stopped
    before writing its first `marker` checkpoint (its args.json is there)."""
    if resuming:
        return
    if (Path(path) / marker).exists():
        raise UserError(f'{path} already holds a run ({marker} exists); pass --resume {Path(path) / marker} '
                        'to continue it, or choose another --save directory')
    if (Path(path) / 'args.json').exists():
        raise UserError(f'{path} holds a run that stopped before its first {marker} (args.json, no {marker}); pass '
                        f'--resume {path} to start it over from the beginning, or choose another --save directory')


def restarts_from_beginning(resume, marker):
    """--resume names a missing checkpoint `marker`: True when its directory holds a run that stopped before
    writing it (args.json is there), which then starts over from the beginning; UserError otherwise."""
    if os.path.isfile(resume):
        return False
    run_dir = Path(resume).parent
    if Path(resume).name == marker and (run_dir / 'args.json').is_file():
        logger.info('%s does not exist: the run in %s stopped before its first checkpoint, so it starts over from '
                    'the beginning', resume, run_dir)
        return True
    raise UserError(f'checkpoint {resume} does not exist; pass the {marker} of a run directory (or the directory)')


# --- one writer per run directory ---------------------------------------------------------------------

LOCK_FILE = '.lock'
_held_locks = {}        # real path of a run directory -> its open lock file (this process holds the lock)


def lock_run_dir(path):
    """Create run directory `path` and take an exclusive OS lock (flock) on its .lock file, held until
    release_run_dirs() or the process ends (a crash or kill -9 releases it too). The file names the holder's
    PID while held. A second process gets a UserError naming that PID. Re-entrant within one process."""
    path = Path(path)
    key = os.path.realpath(path)
    if key in _held_locks:
        return
    if path.exists() and not path.is_dir():
        raise UserError(f'--save {path} is an existing file, not a directory; choose another --save directory')
    try:
        path.mkdir(parents=True, exist_ok=True)
        f = open(path / LOCK_FILE, 'a+')
    except OSError as e:
        raise UserError(f'cannot create the run directory {path} ({e.strerror}); choose a writable --save directory')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or 'unknown'
        f.close()
        raise UserError(f'{path} is in use by another process (PID {holder}, which holds {path / LOCK_FILE}); wait '
                        'for it to finish (or stop it), or choose another --save directory')
    f.seek(0)
    f.truncate()
    f.write(f'{os.getpid()}\n')
    f.flush()
    _held_locks[key] = f


def release_run_dirs():
    """Empty and unlock every run-directory lock this process holds."""
    for f in _held_locks.values():
        with contextlib.suppress(OSError):
            f.truncate(0)
        f.close()                                  # closing the file releases the flock
    _held_locks.clear()


def locks_released(main):
    """Decorator of a stage's main(): run-directory locks it takes are released when it returns or raises, so
    that tests (and callers) can run several stages one after another in one process."""
    import functools

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        finally:
            release_run_dirs()
    return wrapper


# --- seeding and RNG state --------------------------------------------------------------------------

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts):
    """A 63-bit seed that is a pure function of `parts` (ints, strings, lists of ints)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def get_rng_state():
    """Every global RNG state, as types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


# --- devices and torchrun ---------------------------------------------------------------------------

def choose_device(name='auto', local_rank=0, share=False):
    """--device auto|cpu|cuda -> torch.device (auto = cuda when available). The process of local rank r takes
    GPU r; with `share` (processes that exchange only small objects, as the search's ranks) GPU r mod the GPU
    count, so that several processes score on one GPU."""
    if name not in ('auto', 'cpu', 'cuda'):
        raise UserError(f'--device must be auto, cpu or cuda, got {name!r}')
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for but no CUDA device is visible; use --device cpu')
    if name == 'cpu' or not torch.cuda.is_available():
        return torch.device('cpu')
    count = torch.cuda.device_count()
    if local_rank >= count and not share:
        raise UserError(f'local rank {local_rank} needs a GPU of its own but {count} are visible; start at most '
                        f'{count} processes per node (--nproc_per_node)')
    torch.cuda.set_device(local_rank % count)
    torch.backends.cudnn.benchmark = True      # fixed input shapes: let cuDNN pick the fastest kernels
    return torch.device('cuda', local_rank % count)


def amp_dtype(device):
    """bf16 where the device supports it (CPUs, Ampere+ GPUs), else fp16 (which needs a GradScaler)."""
    if device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def memory_format(channels_last):
    """The memory format --channels_last / --no-channels_last asks for (of the model and of every batch)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def make_scaler(device, amp):
    """A GradScaler that is active only for fp16 autocast."""
    return torch.amp.GradScaler(device.type, enabled=bool(amp) and amp_dtype(device) == torch.float16)


def backward_and_step(loss, optimizer, scaler, parameters, grad_clip):
    """Backward through the (possibly disabled) scaler, clip the gradient norm, step."""
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()


class Dist:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""

    def __init__(self):
        self.rank = int(os.environ.get('RANK', 0))
        self.world_size = int(os.environ.get('WORLD_SIZE', 1))
        self.local_rank = int(os.environ.get('LOCAL_RANK', 0))

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def init(self, device, backend=None):
        """Start the process group: `backend`, by default nccl on CUDA and gloo on CPU."""
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend or ('nccl' if device.type == 'cuda' else 'gloo'))
        return self

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values, device):
        """Sum a list of numbers over all ranks (exact for integer counts below 2**53)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, fn):
        """fn() run on rank 0 only, its result (or its UserError) given to every rank."""
        result = None
        if self.is_main:
            try:
                result = ('ok', fn())
            except UserError as e:
                result = ('error', str(e))
        if self.enabled:
            box = [result]
            dist.broadcast_object_list(box, 0)
            result = box[0]
        if result[0] == 'error':
            raise UserError(result[1])
        return result[1]

    def broadcast_buffers(self, model):
        """Give every rank rank 0's buffers (BN statistics). DDP syncs them at the start of each training
        forward, so after the last step each rank holds statistics updated by its own batch only."""
        if self.enabled:
            for buf in model.buffers():
                dist.broadcast(buf, 0)

    def wrap(self, model, device, **ddp_kwargs):
        """model in DistributedDataParallel under torchrun (gradients averaged over ranks), else model itself.
        Save and evaluate the unwrapped model: its state_dict has no `module.` prefix."""
        if not self.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None, **ddp_kwargs)

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# --- checkpoints ------------------------------------------------------------------------------------

DISK_ERRORS = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded',
               errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission denied',
               errno.EPERM: 'permission denied'}


@contextlib.contextmanager
def write_guard(path, tmp=None):
    """An OSError while writing `path` (through `tmp`, which is then removed) becomes one UserError naming the
    file that was not written; files written before, the last good checkpoint included, stay as they were."""
    try:
        yield
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        reason = DISK_ERRORS.get(e.errno, e.strerror or type(e).__name__)
        raise UserError(f'{path} was not written: {reason}; free space (or choose a writable --save) and resume: '
                        'the files written before are intact') from None


def _replace_atomically(path, data):
    """Write bytes to path.tmp, fsync, then os.replace onto path: a crash never leaves a half-written file, and
    a full disk leaves the previous version in place (UserError, temporary file removed)."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    with write_guard(path, tmp):
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def append_line(path, line):
    """Append one line; on a full disk cut the file back to its old length (no half line) and raise UserError."""
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with write_guard(path), open(path, 'a') as f:
            f.write(line + '\n')
            f.flush()
    except UserError:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise


def save_checkpoint(state, path):
    """torch.save (serialized in memory, so that write errors are plain OSErrors), atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return _replace_atomically(path, buf.getbuffer())


def atomic_write_text(path, text):
    """Write a text file atomically."""
    return _replace_atomically(path, text.encode())


def _newest_inside(directory, pattern):
    """The last file matching pattern in directory in natural order (epoch 10 after epoch 9), else the pattern."""
    natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', p.name)]   # noqa: E731
    found = sorted(Path(directory).glob(pattern), key=natural)
    return found[-1] if found else Path(directory) / pattern


def load_checkpoint(path, map_location='cpu', inside='*.pth.tar'):
    """torch.load(weights_only=True); a missing or unreadable file is a UserError. A directory is refused with
    the file inside it that is expected (`inside`: a name or glob pattern)."""
    if os.path.isdir(path):
        raise UserError(f'{path} is a directory, not a checkpoint file; pass the file inside it, e.g. '
                        f'{_newest_inside(path, inside)}')
    if not os.path.isfile(path):
        raise UserError(f'checkpoint {path} does not exist; check the path')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'cannot load checkpoint {path} as plain tensors ({first}); '
                        'it is truncated or not a PyTorch checkpoint of this project or the reference')


def strip_module_prefix(state_dict):
    """Keys saved from a wrapped model start with 'module.' (DistributedDataParallel) or '_orig_mod.'
    (torch.compile), in either order; drop them."""
    for prefix in ('_orig_mod.', 'module.', '_orig_mod.'):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_state_checked(model, state_dict, source):
    """load_state_dict(strict=True) with a one-line UserError naming the first mismatches."""
    state_dict = strip_module_prefix(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f'{len(shapes)} shape mismatches, e.g. {"; ".join(shapes[:2])}')
        if missing:
            parts.append(f'{len(missing)} missing keys, e.g. {missing[0]}')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys, e.g. {unexpected[0]}')
        raise UserError(f'checkpoint {source} does not fit this model ({", ".join(parts)}); '
                        'pass the --init_channels / --layers / dataset it was trained with')
    model.load_state_dict(state_dict, strict=True)


# --- accuracy, counting ---------------------------------------------------------------------

def topk_correct(logits, target, topk=(1,)):
    """Number of samples whose target is among the top-k logits, for each k (0-dim tensors on the
    logits' device, so summing them needs no synchronization)."""
    maxk = min(max(topk), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices                 # (N, maxk)
    hit = pred.eq(target.view(-1, 1))                        # (N, maxk)
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in topk]


def count_parameters(model, skip='auxiliary'):
    """Number of parameter elements, leaving out those whose name contains `skip`."""
    return sum(p.numel() for n, p in model.named_parameters() if not (skip and skip in n))


def count_macs(model, example_input, *forward_args):
    """Multiply-adds of one forward pass in eval mode, counted by torch.utils.flop_counter
    (convolutions and matrix products; FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example_input, *forward_args)
    model.train(was_training)
    return counter.get_total_flops() // 2
