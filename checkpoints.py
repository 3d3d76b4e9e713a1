"""Checkpoint files: atomic torch.save, weights-only loading with one-line errors, and strict state-dict loading
that names the first mismatches."""
import io
import os
import re
from pathlib import Path

import torch

from utils import UserError, replace_atomically


def to_cpu(obj):
    """obj with every tensor inside (dicts, lists, tuples, named tuples, nested) moved to the CPU, so that a plain
    torch.load works on a machine without a GPU; loading copies them back into the model and optimizer on their
    device. A container whose tensors are all on the CPU already is returned itself (saved byte for byte as
    before); a new dict keeps the attributes of the old one (a state_dict's `_metadata`)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        moved = {k: to_cpu(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj
        new = type(obj)(moved)
        for name, value in getattr(obj, '__dict__', {}).items():
            setattr(new, name, value)
        return new
    if isinstance(obj, (list, tuple)):
        moved = [to_cpu(v) for v in obj]
        if all(a is b for a, b in zip(moved, obj)):
            return obj
        return type(obj)(*moved) if hasattr(obj, '_fields') else type(obj)(moved)
    return obj


def save_checkpoint(state, path):
    """torch.save of `state` with every tensor on the CPU (serialized in memory, so that write errors are plain
    OSErrors), atomically."""
    buf = io.BytesIO()
    torch.save(to_cpu(state), buf)
    return replace_atomically(path, buf.getbuffer())


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
    except OSError as e:
        raise UserError(f'cannot read checkpoint {path} ({e.strerror}); check its permissions')
    except Exception as e:      # a text file or a foreign pickle raises anything from KeyError to IndexError
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

