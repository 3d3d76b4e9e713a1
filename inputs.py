"""Checks of what a user hands a CLI, one helper per kind of input, each ending in one UserError that names the
flag, the file and the fix. Every CLI checks its inputs with these where they enter, before it writes anything.

    seed = number('--seed', args.seed, lo=0, hi=SEED_MAX)              # numbers against their range
    path = readable_file('--model_path', args.model_path, 'a supernet checkpoint')
    ckpt = checkpoint('--resume', path, keys={'state_dict': dict, 'epoch': int}, what='a stage-3 checkpoint')
    doc = json_document('--resume', path, {'args': dict, 'evolution': dict}, 'a search checkpoint')
"""
import json
import math
import os
from pathlib import Path

from checkpoints import load_checkpoint
from utils import UserError

SEED_MAX = 2 ** 63 - 1          # torch.manual_seed takes up to 64 bits; derive_seed gives 63


def number(flag, value, lo=None, hi=None, lo_open=False, hi_open=False, fix=None):
    """value unless it is NaN/infinite or outside [lo, hi] (an open end excludes the bound): UserError naming
    the flag, its range and `fix`."""
    if value is None:
        return value
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or (lo is not None and (value < lo or lo_open and value == lo))
    bad = bad or (hi is not None and (value > hi or hi_open and value == hi))
    if bad:
        low = '' if lo is None else f'{"> " if lo_open else ">= "}{lo}'
        high = '' if hi is None else f'{"< " if hi_open else "<= "}{hi}'
        allowed = ' and '.join(x for x in (low, high) if x) or 'finite'
        raise UserError(f'{flag} must be {allowed}, got {value}' + (f'; {fix}' if fix else ''))
    return value


def numbers(checks):
    """number() over (flag, value, keyword arguments) triples; the first bad one raises."""
    for flag, value, kwargs in checks:
        number(flag, value, **kwargs)


def readable_file(flag, path, what, fix='check the path'):
    """path when it is a regular file this process may read; else one UserError naming the flag and the fix."""
    if path is None:
        return path
    p = Path(path)
    if p.is_dir():
        raise UserError(f'{flag} {path} is a directory, not {what}; pass the file itself')
    if not p.exists():
        raise UserError(f'{flag} {path} does not exist; {fix}')
    if not os.access(p, os.R_OK):
        raise UserError(f'{flag} {path} is not readable (permission denied); fix its permissions or pass another '
                        'file')
    return path


def writable_dir(flag, path):
    """path when it is a directory or can be created as one; a file in its place is refused."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f'{flag} {path} is an existing file, not a directory; choose another {flag} directory')
    return path


def check_keys(flag, path, doc, keys, what):
    """doc is a dict holding every key of `keys` ({name: type or tuple of types}) with a value of that type."""
    if not isinstance(doc, dict):
        raise UserError(f'{flag} {path} is not {what} (it holds a {type(doc).__name__}, not a dict); pass {what}')
    for key, kind in keys.items():
        if key not in doc:
            raise UserError(f'{flag} {path} is not {what}: it has no {key!r} entry; pass {what}')
        if kind is not None and (not isinstance(doc[key], kind) or isinstance(doc[key], bool) and kind is int):
            raise UserError(f'{flag} {path} is not {what}: its {key!r} entry is a {type(doc[key]).__name__}; '
                            f'pass {what}')
    return doc


def checkpoint(flag, path, keys, what, inside='*.pth.tar'):
    """The dict a checkpoint file holds, checked for `keys` (see check_keys): unreadable files, text files,
    pickles of a list or an int and checkpoints of another stage each end in one UserError."""
    if path is not None and not os.path.isdir(path):
        readable_file(flag, path, what)
    return check_keys(flag, path, load_checkpoint(path, inside=inside), keys, what)


def json_document(flag, path, keys, what):
    """The JSON object of a file, checked for `keys` (see check_keys)."""
    readable_file(flag, path, what)
    try:
        doc = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise UserError(f'{flag} {path} is a binary file, not {what}; pass {what}')
    except ValueError as e:
        raise UserError(f'{flag} {path} is not valid JSON ({e}); it is not {what}')
    return check_keys(flag, path, doc, keys, what)
