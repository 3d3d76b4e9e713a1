"""The command-line contract and run directories shared by every script: one-line errors with exit status 2,
argparse with defaults in --help, the reference's no-op flags, logging, run directories (log.txt, args.json,
metrics.jsonl, TensorBoard), the one-writer lock, and atomic file writes.

Seeds live in seeding.py, devices in devices.py, torchrun in distributed.py, checkpoint files in
checkpoints.py, counting in counting.py, what the training stages share in training.py.
"""
import argparse
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import sys
import time
from pathlib import Path


from genotypes import GenotypeError

logger = logging.getLogger('genas')


# --- errors a user can cause --------------------------------------------------------------------

class UserError(Exception):
    """Bad input the user can fix (flag value, data, checkpoint). The message names the fix."""


def run_cli(main, parse_args, argv=None, resume_hint=None):
    """Parse, run `main(args)`; a UserError / GenotypeError ends with one line and exit status 2, Ctrl-C
    (SIGINT) with one line saying how to continue and exit status 130. resume_hint(args): that sentence
    (default: rerun the same command)."""
    args = None
    try:
        args = parse_args(argv)
        return main(args)
    except (UserError, GenotypeError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        hint = resume_hint(args) if resume_hint is not None and args is not None else 'rerun the same command'
        print(f'error: interrupted; {hint} to continue (the files written before are intact)', file=sys.stderr)
        sys.exit(130)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help only where it tells something: not when the help already
    states its default (it would say it twice), nor for a required flag, a default of None (the help says
    what happens without the flag) or a suppressed default."""

    def _get_help_string(self, action):
        help = action.help or ''
        if (action.required or action.default is None or action.default is argparse.SUPPRESS
                or 'default' in help.lower()):
            return help
        return super()._get_help_string(action)


# Where a run is and what it does to the files there: never taken from --config (a new run writes elsewhere).
NOT_FROM_CONFIG = ('config', 'save', 'out', 'resume', 'evaluate', 'refresh', 'restart', 'stop_after')


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), defaults shown in --help, and --config: the resolved
    arguments of an earlier run (its args.json) as defaults, which flags on the command line override."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('formatter_class', DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument('--config', default=None, metavar='RUN/args.json',
                          help='start from the arguments an earlier run resolved (the args.json of its run directory); '
                               'flags given here override them; where it runs (--save, --resume, ...) is not taken')

    def error(self, message):
        print(f'error: {message} (see {self.prog} --help)', file=sys.stderr)
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        first, _ = super().parse_known_args(args, namespace)
        if first.config is not None:
            known = {a.dest for a in self._actions}
            config = self._read_config(first.config)
            self.set_defaults(**{k: v for k, v in config.items() if k in known and k not in NOT_FROM_CONFIG})
        return super().parse_known_args(args, namespace)

    def _read_config(self, path):
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, ValueError, UnicodeDecodeError) as e:
            self.error(f'--config {path} cannot be read as JSON ({getattr(e, "strerror", None) or e}); pass the '
                       'args.json of a run directory')
        if not isinstance(config, dict):
            self.error(f'--config {path} holds a {type(config).__name__}, not the arguments of a run (a JSON '
                       'object); pass the args.json of a run directory')
        return config


def add_noop_flags(parser, flags, notes=None):
    """Accept the reference's flags that mean nothing here, so that its command lines run unchanged
    (`pop_noop_flags` warns about them). flags: {name: type}, type None for a switch; notes: {name: what the
    flag means elsewhere}, added to its help where one name has another meaning in another stage."""
    g = parser.add_argument_group('reference flags without effect here (accepted with a warning)')
    for name, kind in flags.items():
        extra = dict(action='store_true') if kind is None else dict(type=kind, metavar=name.upper())
        note = (notes or {}).get(name)
        g.add_argument(f'--{name}', dest=f'noop_{name}', default=None,
                       help='does nothing here' + (f' ({note})' if note else ''), **extra)


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
    """A tqdm bar on the main process when stderr is a terminal (log lines carry progress otherwise). Under
    torchrun only rank 0 (RANK) draws, also where a rank runs a loop of its own (is_main of Dist.single())."""
    from tqdm import tqdm
    draws = is_main and int(os.environ.get('RANK', 0)) == 0
    return tqdm(iterable, disable=None if draws else True, dynamic_ncols=True, leave=False, **kwargs)


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










def changed_flags(saved, current, fallback=None):
    """['--k old -> new', ...] for every flag of `current` (a dict) whose value differs from `saved` (the dict a run
    directory recorded). A flag `saved` lacks (written before the flag existed) is compared with
    fallback[k] where given (what the older version did), else skipped."""
    fallback = fallback or {}
    out = []
    for k, v in current.items():
        if k in saved:
            old = saved[k]
        elif k in fallback:
            old = fallback[k]
        else:
            continue
        if old != v:
            out.append(f'--{k} {old} -> {v}')
    return out


def parse_stds(text):
    """'0.001,0.003,0.006' -> [0.001, 0.003, 0.006]; positive and strictly increasing, or UserError."""
    if isinstance(text, (list, tuple)):          # already parsed (an args.json read through --config)
        text = ','.join(map(str, text))
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
        self._args = vars(args)
        self._last = {}                            # the last metrics record: the run's result in its hparams
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
        self._last = record
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
        """Write the run's hparams (its resolved flags and the numbers of its last metrics record, so that runs
        compare side by side in TensorBoard's HPARAMS tab) and close the writer."""
        if self._tb is not None:
            if self._last:
                self._tb.add_hparams(hparam_values(self._args), {f'final/{k}': v for k, v in self._last.items()
                                                                 if _is_number(v)}, run_name='hparams')
            self._tb.close()
            self._tb = None


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def hparam_values(args):
    """Flags as TensorBoard hparams accepts them: numbers, strings and booleans as they are, None as 'None',
    anything else (lists) as its JSON text."""
    return {k: v if isinstance(v, (bool, str)) or _is_number(v) else json.dumps(v, default=str)
            for k, v in args.items()}


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


def lock_run_dir(path, kind=None):
    """Create run directory `path` and take an exclusive OS lock (flock) on its .lock file, held until
    release_run_dirs() or the process ends (a crash or kill -9 releases it too). The file names the holder's
    PID while held. A second process gets a UserError naming that PID. Re-entrant within one process.
    `kind` (a key of RUN_KINDS): the kind of run the caller writes; a directory that holds another kind of run
    is refused before anything is written (see claim_run_kind)."""
    path = Path(path)
    key = os.path.realpath(path)
    if key in _held_locks:
        if kind is not None:
            claim_run_kind(path, kind)
        return
    if path.exists() and not path.is_dir():
        raise UserError(f'--save {path} is an existing file, not a directory; choose another --save directory')
    if kind is not None and path.is_dir():
        refuse_other_kind(path, kind)              # before the .lock file is created in another run's directory
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
    # Unbuffered: the PID only names the holder to a second process, and a full disk must leave no write pending.
    with contextlib.suppress(OSError):
        os.ftruncate(f.fileno(), 0)
        os.pwrite(f.fileno(), f'{os.getpid()}\n'.encode(), 0)
    _held_locks[key] = f
    if kind is not None:
        claim_run_kind(path, kind)


# --- what wrote a run directory ------------------------------------------------------------------------

RUN_FILE = 'run.json'      # {"kind": ...}: written by the first CLI that claims the directory
RUN_KINDS = {
    'supernet': 'a stage-1 supernet run (train_supernet/train.py)',
    'search': 'a stage-2 evolutionary search (evolutionary_search/search.py)',
    'scoring': 'a stage-2 scoring of given cells (evolutionary_search/search.py --arch / --candidates)',
    'retrain': 'a stage-3 retraining run (retrain/retrain.py)',
    'drawings': 'cell drawings (retrain/visualize.py)',
    'proxy-scores': 'proxy-study scores (proxy_study/scores.py)',
    'ground-truth': 'proxy-study ground truth (proxy_study/ground_truth.py)',
    'proxy-report': 'a proxy-study report (proxy_study/report.py)',
    'nb201-study': 'a NAS-Bench-201 study (proxy_study/nb201.py)',
    'nb201-datafree': 'a data-free NAS-Bench-201 study (proxy_study/nb201_datafree.py)',
    'demo': 'the demo (demo.py)',
}
# Run directories written before run.json existed: a file each kind writes, and no other.
LEGACY_FILES = (('last.pth.tar', 'supernet'), ('checkpoint_epoch_0.pth.tar', 'supernet'),
                ('search_checkpoint.json', 'search'), ('checkpoint.pth.tar', 'retrain'),
                ('model_best.pth.tar', 'retrain'), ('protocol.json', 'ground-truth'), ('demo_state.json', 'demo'),
                # runs.jsonl before settings.json: a data-free study writes both, proxy scores only settings.json
                ('runs.jsonl', 'nb201-datafree'), ('settings.json', 'proxy-scores'), ('report.md', 'proxy-report'),
                ('scores.jsonl', 'scoring'))


def recorded_kind(path):
    """The kind of run directory `path` holds: its run.json, else what its files show (older runs), else None."""
    path = Path(path)
    record = path / RUN_FILE
    if record.is_file():
        try:
            kind = json.loads(record.read_text()).get('kind')
        except (ValueError, AttributeError, UnicodeDecodeError, OSError):
            kind = None
        if kind not in RUN_KINDS:
            raise UserError(f'{record} is not a run record of this project (no known "kind"); it is not a run '
                            'directory of these scripts: choose another directory')
        return kind
    return next((kind for name, kind in LEGACY_FILES if (path / name).exists()), None)


def refuse_other_kind(path, kind):
    """UserError when directory `path` holds another kind of run than `kind` (its files would be overwritten);
    reads only."""
    if kind is None:
        return
    found = recorded_kind(path) if Path(path).is_dir() else None
    if found is not None and found != kind:
        raise UserError(f'{path} holds {RUN_KINDS[found]}; {RUN_KINDS[kind]} would overwrite its files: choose '
                        'another directory')


def claim_run_kind(path, kind):
    """Refuse a directory written by another kind of run (refuse_other_kind); record `kind` in RUN_FILE when the
    directory has no record yet."""
    refuse_other_kind(path, kind)
    if not (Path(path) / RUN_FILE).exists():
        atomic_write_text(Path(path) / RUN_FILE, json.dumps({'kind': kind}) + '\n')


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


# --- atomic file writes -----------------------------------------------------------------------------

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


def replace_atomically(path, data):
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


def atomic_write_text(path, text):
    """Write a text file atomically."""
    return replace_atomically(path, text.encode())
