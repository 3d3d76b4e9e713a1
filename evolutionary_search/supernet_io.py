"""Loading a trained supernet for scoring: the one loader of stage 2 and the proxy study.

    model, meta, space = load_supernet('runs/supernet-c100/checkpoint_epoch_250.pth.tar', args)
    init_model = load_init_supernet(args.init_model_path, args, model)      # the angle metrics
    data_flags = inherited_data_flags(data_args, meta.get('args', {}))       # score on the supernet's split

`args` needs `space` (None: the checkpoint's), `init_channels` and `layers` (None: the checkpoint's; a
reference checkpoint records neither). Stage-1 checkpoints record their space; reference checkpoints
do not and hold DARTS supernets.
"""
from typing import NamedTuple

import torch

from data import inherited_split_flags
from spaces import get_space
from checkpoints import load_checkpoint, load_state_checked
from utils import UserError

# Data flags that default to the values the supernet was trained with (stored in stage-1 checkpoints),
# with the value assumed for checkpoints that do not record them (the reference trains on CIFAR-100).
INHERITED = {'dataset': 'cifar100', 'data': None, 'split_data': 1}


class LoadedSupernet(NamedTuple):
    model: object        # the space's supernet, weights loaded
    meta: dict           # the checkpoint without its weights and optimizer (args, epoch, split, ...)
    space: object        # spaces.SearchSpace


def checkpoint_space(ckpt, args, path):
    """The space a checkpoint records (reference checkpoints record none: DARTS), checked against --space."""
    saved = ckpt.get('space') or ckpt.get('args', {}).get('space')
    if saved and args.space and saved != args.space:
        raise UserError(f'{path} holds a {saved} supernet, not {args.space}; drop --space or pass a {args.space} '
                        'checkpoint')
    return get_space(saved or args.space)       # neither: the default space (DARTS)


def check_weights(state, path):
    """Every entry is a tensor and every float one finite: a diverged run's NaN weights would give NaN scores."""
    odd = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise UserError(f'{path} is not a supernet checkpoint (its state_dict entry {odd!r} is a '
                        f'{type(state[odd]).__name__}, not a tensor)')
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f'{path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): its training '
                        'diverged; pass a checkpoint of an earlier epoch or of a run that did not diverge')


def load_supernet(path, args, inside='checkpoint_epoch_*.pth.tar'):
    """A supernet from a stage-1 or reference checkpoint, as a LoadedSupernet. `inside`: the file expected when `path` is a stage-1 run directory."""
    ckpt = load_checkpoint(path, inside=inside)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.endswith('classifier.weight') for k in state):
        raise UserError(f'{path} is not a supernet checkpoint (no state_dict with classifier weights)')
    check_weights(state, path)
    space = checkpoint_space(ckpt, args, path)
    C = args.init_channels or ckpt.get('init_channels')
    layers = args.layers or ckpt.get('layers')
    if C is None or layers is None:
        raise UserError(f'{path} does not record the supernet shape (a reference checkpoint?); '
                        'pass --init_channels 16 --layers 8 (the reference\'s) or the values it was trained with')
    num_classes = next(v for k, v in state.items() if k.endswith('classifier.weight')).shape[0]
    model = space.build_supernet(C, num_classes, layers)
    load_state_checked(model, state, path)
    return LoadedSupernet(model, {k: v for k, v in ckpt.items() if k not in ('state_dict', 'optimizer')}, space)


def load_init_supernet(path, args, model):
    """The supernet before training (checkpoint_epoch_0.pth.tar) that the angle metrics compare `model`
    with; it must be of the same space and shape."""
    init_model = load_supernet(path, args, inside='checkpoint_epoch_0.pth.tar').model
    if (type(init_model) is not type(model) or init_model.init_channels != model.init_channels
            or init_model.num_layers != model.num_layers):
        raise UserError(f'--init_model_path {path} and --model_path hold supernets of different spaces or shapes; '
                        'pass the checkpoint_epoch_0.pth.tar of the same stage-1 run')
    return init_model


def inherited_data_flags(args, trained_args):
    """The data flags of `args` with those not given (None) set to the supernet's own values (so that scoring
    uses its valid part), as a new dict; `args` is left as it is."""
    flags = {k: trained_args.get(k, fallback) if getattr(args, k) is None else getattr(args, k)
             for k, fallback in INHERITED.items()}
    return {**flags, **inherited_split_flags(args, trained_args)}
