"""The one scoring context of stage 2 and of the proxy study: the scoring flags, their checks, and loading
the supernet(s) and their data split into a ScoringContext.

    p = ArgumentParser(); add_scoring_args(p)                   # the flags, one help text and default each
    args = check_scoring_args(p.parse_args(argv), ['wlm'])      # a checked copy (--stds parsed)
    scoring = build_context(args, device, ['wlm'], notes=notes)
    METRICS['wlm'](scoring.ctx, candidate)
    scoring.settings                                            # args with what was resolved (space, data split)

Nothing here writes into the caller's args: `settings` is a new namespace.
"""
import argparse
from typing import NamedTuple

from data import SPLIT_FLAGS, choose_split, inherited_split_flags, load_search_data, split_digest
from devices import memory_format
from evolutionary_search.metrics import NEEDS_INIT, PRECISIONS, ScoringContext
from evolutionary_search.supernet_io import INHERITED, inherited_data_flags, load_init_supernet, load_supernet
from inputs import number
from spaces import SPACE_NAMES
from utils import UserError, parse_stds, require

# Flags that only count images or batches: each must be >= 1 (None where a default is resolved later).
POSITIVE_FLAGS = ('max_train_img_size', 'max_val_img_size', 'acc_train_img_size', 'acc_val_img_size', 'batch_size',
                  'test_batch_size')


class Scoring(NamedTuple):
    ctx: ScoringContext               # the trained (and initial) supernet on its data split, ready to score
    settings: argparse.Namespace      # the args with what was resolved: space, test_batch_size, data and split flags
    meta: dict                        # the trained supernet's checkpoint without its weights


def add_supernet_args(parser):
    g = parser.add_argument_group('supernet')
    g.add_argument('--model_path', default=None, help='trained supernet checkpoint of stage 1 (required), e.g. '
                                                      'checkpoint_epoch_250.pth.tar')
    g.add_argument('--init_model_path', default=None,
                   help='its checkpoint_epoch_0.pth.tar, the supernet before training (the angle metrics)')
    g.add_argument('--space', default=None, choices=SPACE_NAMES,
                   help='search space of the supernet; None: the one its checkpoint records (darts for reference '
                        'checkpoints)')
    g.add_argument('--init_channels', type=int, default=None,
                   help='supernet C; read from stage-1 checkpoints, needed for reference ones (16)')
    g.add_argument('--layers', type=int, default=None,
                   help='supernet cells; read from stage-1 checkpoints, needed for reference ones (8)')
    return g


def add_metric_args(parser):
    g = parser.add_argument_group('scoring')
    g.add_argument('--stds', default='0.001,0.003,0.006', help='strictly increasing weight-noise stds of wlm')
    g.add_argument('--max_train_img_size', type=int, default=850, help='training images for BN recalibration')
    g.add_argument('--max_val_img_size', type=int, default=25000, help='validation images of acc and wlm')
    g.add_argument('--acc_train_img_size', type=int, default=15000,
                   help='BN images of the acc term of acc+wlm (the reference\'s); None: --max_train_img_size')
    g.add_argument('--acc_val_img_size', type=int, default=25000,
                   help='validation images of the acc term of acc+wlm; None: --max_val_img_size')
    g.add_argument('--wlm_weight', type=float, default=0.0, help='gamma of angle+wlm and acc+wlm')
    g.add_argument('--acc_weight', type=float, default=0.0, help='weight of acc in angle+acc')
    g.add_argument('--batch_size', type=int, default=64, help='BN recalibration batch (also the zero-cost batch)')
    g.add_argument('--test_batch_size', type=int, default=None,
                   help='validation batch size (eval mode: changes speed only); None: 64 on a CPU (larger '
                        'batches are slower there), 512 on a GPU')
    g.add_argument('--bn_momentum', type=float, default=None,
                   help='BN momentum during recalibration; None: exact cumulative average; 0.1: the reference')
    g.add_argument('--perturb', default='cumulative', choices=['cumulative', 'direct'],
                   help='cumulative: noise s_i - s_(i-1) on top of the last level (reference); '
                        'direct: s_i on the clean weights')
    g.add_argument('--score_precision', default='fp32', choices=PRECISIONS,
                   help='numerics of scoring: fp32 (TF32 off), tf32, bf16 or fp16 autocast; see '
                        'docs/performance.md for the measured ranking agreement before using anything but fp32')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='where to score')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                   help='channels-last memory format (faster on CPU)')
    return g


def add_scoring_args(parser):
    """The scoring flags of stage 2, which the proxy study uses too."""
    add_supernet_args(parser)
    add_metric_args(parser)
    return parser


def check_scoring_args(args, metrics):
    """A copy of args with --stds parsed; one UserError for the first bad scoring flag. `metrics`: the metric names
    that will be scored (those of NEEDS_INIT need --init_model_path)."""
    args = argparse.Namespace(**vars(args))
    args.stds = parse_stds(args.stds)
    for flag in ('wlm_weight', 'acc_weight'):        # a NaN weight makes every combined score NaN
        number(f'--{flag}', getattr(args, flag), fix='pass a finite weight')
    number('--bn_momentum', args.bn_momentum, lo=0, hi=1)
    needs = sorted(NEEDS_INIT & set(metrics))
    require([(getattr(args, f) is None or getattr(args, f) >= 1, f'--{f} must be >= 1') for f in POSITIVE_FLAGS] + [
        (args.model_path is not None,
         '--model_path is required: the trained supernet checkpoint (e.g. checkpoint_epoch_250.pth.tar)'),
        (args.init_model_path or not needs,
         f'{", ".join(needs)} need(s) --init_model_path: pass the checkpoint_epoch_0.pth.tar of stage 1, or score '
         'other metrics')])
    return args


def default_test_batch_size(device):
    """Validation batches change speed only (eval mode): larger ones are slower on a CPU, faster on a GPU."""
    return 64 if device.type == 'cpu' else 512


def trained_split(meta, dataset, n):
    """(digest, description) of the train part the supernet was trained on, or None where unknown: recorded
    by stage 1; derived from the args of older stage-1 checkpoints; for a reference checkpoint (no args) the
    NAS-Bench-201 file of its CIFAR dataset, which the reference always trains on."""
    if 'split_digest' in meta:
        return meta['split_digest'], meta.get('split', 'its recorded split')
    if meta.get('args'):
        old = argparse.Namespace(dataset=dataset, split=None, split_file=None, split_seed=None, train_portion=None,
                                 split_data=meta['args'].get('split_data', 1))
        split = choose_split(argparse.Namespace(**{**vars(old), **inherited_split_flags(old, meta['args'])}))
    elif dataset in ('cifar10', 'cifar100'):
        split = choose_split(argparse.Namespace(dataset=dataset, split='nb201', split_data=1))
    else:
        return None
    return split_digest(split.indices(n)[0]), split.describe()


def check_split(model_path, meta, data, dataset, force, notes):
    """One error line when scoring would use another split than the supernet was trained on (its "valid"
    images would include training images), unless `force` (--force_split)."""
    if not meta.get('args'):
        notes.append(f'{model_path} is a reference checkpoint (no args): scoring on {data.split.describe()}')
    else:
        notes.append(f'scoring on {data.split.describe()}')
    expected = trained_split(meta, dataset, len(data.train))
    if expected is None:
        notes.append(f'the split {model_path} was trained on is unknown (not checked)')
    elif expected[0] != data.split_digest:
        message = (f'{model_path} was trained on {expected[1]}, but this run scores on {data.split.describe()}, '
                   'whose valid part overlaps the supernet\'s training images')
        if not force:
            raise UserError(f'{message}; drop the split flags to use the supernet\'s split, or pass --force_split')
        notes.append(f'warning: {message} (--force_split)')


def load_data(data_args, meta):
    """The data split to score on and the resolved data flags: those of `data_args` not given (None) are the
    supernet's own. Returns (SearchData, a new namespace)."""
    flags = argparse.Namespace(**{**vars(data_args), **inherited_data_flags(data_args, meta.get('args', {}))})
    data = load_search_data(flags)          # writes the resolved split into `flags`, our own namespace
    return data, flags


def scoring_context(s, model, init_model, data, device, space, **fields):
    """The ScoringContext of resolved settings `s`, the models moved to `device`; `fields` override the rest."""
    fmt = memory_format(s.channels_last)
    return ScoringContext(
        model=model.to(device).to(memory_format=fmt).eval(), init_model=None if init_model is None else
        init_model.to(device), data=data.resident(device), device=device, seed=s.seed, stds=tuple(s.stds),
        batch_size=s.batch_size, test_batch_size=s.test_batch_size, max_train_img_size=s.max_train_img_size,
        max_val_img_size=s.max_val_img_size, acc_train_img_size=s.acc_train_img_size or s.max_train_img_size,
        acc_val_img_size=s.acc_val_img_size or s.max_val_img_size, wlm_weight=s.wlm_weight, acc_weight=s.acc_weight,
        bn_momentum=s.bn_momentum, perturb=s.perturb, memory_format=fmt, precision=s.score_precision, space=space,
        **fields)


def build_context(args, device, metrics, data_args=None, force_split=False, notes=None, **fields):
    """Load the supernet (and, for `metrics` that need it, the initial one) and the data split they are scored
    on; every check a user can fail is made here. `args`: checked by check_scoring_args; `data_args`: the data
    flags (None: those of args), a flag left None takes the supernet's value. Lines worth logging (which split is
    scored) are appended to `notes`; `fields` go to the ScoringContext (e.g. cache, bn_per_candidate)."""
    model, meta, space = load_supernet(args.model_path, args)
    init_model = load_init_supernet(args.init_model_path, args, model) if NEEDS_INIT & set(metrics) else None
    data, flags = load_data(args if data_args is None else data_args, meta)
    if data.num_classes != model.num_classes:
        raise UserError(f'{args.model_path} has {model.num_classes} classes but the dataset {flags.dataset} has '
                        f'{data.num_classes}; pass the dataset the supernet was trained on')
    check_split(args.model_path, meta, data, flags.dataset, force_split, [] if notes is None else notes)
    settings = argparse.Namespace(**{
        **vars(args), **{k: getattr(flags, k) for k in (*INHERITED, *SPLIT_FLAGS)}, 'space': space.name,
        'test_batch_size': args.test_batch_size or default_test_batch_size(device)})
    return Scoring(scoring_context(settings, model, init_model, data, device, space, **fields), settings, meta)
