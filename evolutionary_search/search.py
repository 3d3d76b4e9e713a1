"""Stage 2: evolutionary search over the trained supernet, scored by angle / accuracy / flatness.

    cd evolutionary_search
    python3 search.py --split_data 1 --seed 3 --data ../data \
        --init_model_path ../runs/supernet-c100/checkpoint_epoch_0.pth.tar \
        --model_path ../runs/supernet-c100/checkpoint_epoch_250.pth.tar \
        --metric wlm --stds 0.001,0.003,0.006 --max_train_img_size 850 --max_val_img_size 25000 \
        --wlm_weight 0 --acc_weight 0 --save ../runs/search-wlm                # GeNAS flatness search
    python3 search.py ... --resume ../runs/search-wlm                            # after a crash
    python3 search.py ... --arch GENAS_FLATNESS_CIFAR100 --arch DARTS_V2         # score given cells only
    python3 search.py ... --flops_limit 600M       # only cells under 600 M multiply-adds on ImageNet (C=48)
    python3 search.py --model_path ../runs/nb201-c10/checkpoint_epoch_250.pth.tar ...  # NB201: the space comes
                                                                                 # from the checkpoint

Writes to --save: search_checkpoint.json (after every scored candidate), generations.jsonl (one line
per generation), genotype.json (the best cell, for `retrain.py --arch`), log.txt, args.json, tb/.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import genotypes  # noqa: E402
from data import add_data_args, inherit_split, load_search_data, resolve_split, split_digest  # noqa: E402
from genotypes import GenotypeError  # noqa: E402
from evolutionary_search.budget import NETWORKS, make_budget, parse_amount  # noqa: E402
from evolutionary_search.evolution import Evolution, cand_key  # noqa: E402
from evolutionary_search.metrics import METRICS, NEEDS_INIT, PRECISIONS, ScoringContext  # noqa: E402
from evolutionary_search.runner import CHECKPOINT, read_search, run_search, score_given  # noqa: E402
from evolutionary_search.supernet_io import INHERITED, fill_inherited, load_init_supernet, load_supernet  # noqa: E402
from spaces import SPACE_NAMES  # noqa: E402
from devices import choose_device, memory_format  # noqa: E402
from distributed import Dist  # noqa: E402
from seeding import seed_everything  # noqa: E402
from utils import (ArgumentParser, Run, UserError, add_noop_flags, lock_run_dir, locks_released, logger,  # noqa: E402
                   parse_stds, pop_noop_flags, require, resolve_run_paths, restarts_from_beginning, run_cli)

# Flags that change scores or proposals: a resumed search must use the same values.
SCORE_FLAGS = ['metric', 'stds', 'seed', 'max_train_img_size', 'max_val_img_size', 'wlm_weight', 'acc_weight',
               'batch_size', 'bn_momentum', 'perturb', 'score_precision', 'acc_train_img_size', 'acc_val_img_size',
               'population_num', 'select_num', 'mutation_num', 'crossover_num', 'm_prob', 'dataset', 'split_data',
               'split', 'train_portion', 'split_seed', 'split_file', 'random_label', 'train_subset', 'valid_subset',
               'bn_images', 'flops_limit', 'params_limit', 'budget_network', 'budget_channels', 'budget_layers']
SEARCH_OUTPUTS = (CHECKPOINT, 'metrics.jsonl', 'genotype.json')     # what --restart discards
NOOP_FLAGS = {'cutout': None, 'cutout_length': int}      # reference flags that do nothing in its search either


def get_args_parser():
    p = ArgumentParser(description='Stage 2: evolutionary search (GeNAS).')
    g = p.add_argument_group('reference flags')
    g.add_argument('--metric', default='wlm', help=f'one of {", ".join(METRICS)}')
    g.add_argument('--stds', default='0.001,0.003,0.006', help='strictly increasing weight-noise stds for wlm')
    g.add_argument('--max_train_img_size', type=int, default=850, help='training images for BN recalibration')
    g.add_argument('--max_val_img_size', type=int, default=25000, help='validation images for acc / wlm')
    g.add_argument('--wlm_weight', type=float, default=0.0, help='gamma of angle+wlm and acc+wlm')
    g.add_argument('--acc_weight', type=float, default=0.0, help='weight of acc in angle+acc')
    g.add_argument('--init_model_path', default=None, help='supernet checkpoint before training (angle metrics)')
    g.add_argument('--model_path', default=None, help='trained supernet checkpoint')
    g.add_argument('--batch_size', type=int, default=64, help='BN recalibration batch size')
    g.add_argument('--test_batch_size', type=int, default=None,
                   help='validation batch size (eval mode: changes speed only); None: 64 on a CPU (larger '
                        'batches are slower there), 512 on a GPU')
    g.add_argument('--seed', type=int, default=3, help='seed of the evolution, BN batches and weight noise')
    g.add_argument('--save', default=None, help='run directory; None means runs/search-<metric>-<time>')
    g.add_argument('-r', '--refresh', action='store_true',
                   help='resume the search checkpoint in --save, as the reference; what happens anyway without it')
    add_data_args(p)
    p.set_defaults(split=None, **{k: None for k in INHERITED})
    g = p.add_argument_group('evolution')
    g.add_argument('--max_epochs', type=int, default=20, help='generations')
    g.add_argument('--population_num', type=int, default=50, help='candidates per generation')
    g.add_argument('--select_num', type=int, default=10, help='parents kept (elitist top-k)')
    g.add_argument('--mutation_num', type=int, default=25, help='mutations per generation')
    g.add_argument('--crossover_num', type=int, default=25, help='crossovers per generation')
    g.add_argument('--m_prob', type=float, default=0.1, help='per-edge mutation probability')
    g = p.add_argument_group('additions')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='where to score')
    g.add_argument('--space', default=None, choices=SPACE_NAMES,
                   help='search space of the supernet; None: the one its checkpoint records (darts for '
                        'reference checkpoints)')
    g.add_argument('--init_channels', type=int, default=None,
                   help='supernet C; read from stage-1 checkpoints, needed for reference ones (16)')
    g.add_argument('--layers', type=int, default=None,
                   help='supernet cells; read from stage-1 checkpoints, needed for reference ones (8)')
    g.add_argument('--resume', default=None, help='search checkpoint (or its run directory) to continue')
    g.add_argument('--restart', action='store_true',
                   help='discard the search (checkpoint, generations, genotype.json) in --save and start over; '
                        'without it a search is never overwritten')
    g.add_argument('--force_split', action='store_true',
                   help='score even when the split differs from the one the supernet was trained on (its "valid" '
                        'images then include training images)')
    g.add_argument('--bn_images', default='shared', choices=['shared', 'per_candidate'],
                   help='BN recalibration images: shared: the same for every candidate (seeded by --seed); '
                        'per_candidate: drawn from (seed, candidate), like the reference\'s fresh batches per '
                        'candidate')
    g.add_argument('--bn_momentum', type=float, default=None,
                   help='BN momentum during recalibration; None: exact cumulative average; 0.1: the reference')
    g.add_argument('--perturb', default='cumulative', choices=['cumulative', 'direct'],
                   help='cumulative: noise s_i - s_(i-1) on top of the last level (reference); '
                        'direct: s_i on the clean weights')
    g.add_argument('--acc_train_img_size', type=int, default=15000, help='BN images of the acc term of acc+wlm')
    g.add_argument('--acc_val_img_size', type=int, default=25000, help='validation images of the acc term of acc+wlm')
    g.add_argument('--candidates', default=None,
                   help='file of candidates (one per line: 28 ints for darts; an arch string or 6 ints for '
                        'nb201) to score instead of searching')
    g.add_argument('--arch', action='append', default=None,
                   help='cell to score instead of searching (repeatable): darts: named genotype or genotype '
                        '.json; nb201: arch string or the genotype.json of an nb201 search')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                   help='channels-last memory format (faster on CPU)')
    g.add_argument('--score_precision', default='fp32', choices=PRECISIONS,
                   help='numerics of scoring: fp32 (TF32 off), tf32, bf16 or fp16 autocast; see docs/performance.md '
                        'for the measured ranking agreement before using anything but fp32')
    g.add_argument('--stop_after', type=int, default=0,
                   help='stop after scoring N candidates in this invocation (resumable; 0: off)')
    g = p.add_argument_group('cost budget (evolutionary_search/budget.py)')
    g.add_argument('--flops_limit', type=parse_amount, default=None,
                   help='largest multiply-adds of one image through the --budget_network (e.g. 600M, 0.6G, 6e8); '
                        'candidates over it are never proposed nor scored; None: no limit')
    g.add_argument('--params_limit', type=parse_amount, default=None,
                   help='largest parameter count of that network (e.g. 5.5M); None: no limit')
    g.add_argument('--budget_network', default='imagenet', choices=NETWORKS,
                   help='where the limits are measured: imagenet: stage 3\'s ImageNet network (224x224, 1000 classes, '
                        'no auxiliary head; DARTS space only); cifar: the stand-alone network of the searched dataset '
                        '(DARTS: stage 3\'s NetworkCIFAR; NB201: the benchmark\'s network). Default: imagenet')
    g.add_argument('--budget_channels', type=int, default=None,
                   help='init channels of that network; None: stage 3\'s default (imagenet 48, cifar 36; NB201 16)')
    g.add_argument('--budget_layers', type=int, default=None,
                   help='cells of that network; None: stage 3\'s default (imagenet 14, cifar 20; NB201 5 per stage)')
    add_noop_flags(p, NOOP_FLAGS)
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    pop_noop_flags(args)
    if args.metric not in METRICS:
        raise UserError(f'unknown --metric {args.metric!r}; choose one of {", ".join(METRICS)}')
    args.stds = parse_stds(args.stds)
    require([(getattr(args, f) is None or getattr(args, f) >= 1, f'--{f} must be >= 1')
             for f in ('max_train_img_size', 'max_val_img_size', 'batch_size', 'test_batch_size', 'max_epochs',
                       'population_num', 'select_num')])
    require([(args.mutation_num + args.crossover_num <= args.population_num,
              '--mutation_num + --crossover_num must not exceed --population_num'),
             (args.select_num <= args.population_num,
              f'--select_num {args.select_num} exceeds --population_num {args.population_num}: the parents are '
              'chosen among the population; lower --select_num'),
             (args.model_path is not None,
              '--model_path is required: the trained supernet checkpoint (e.g. checkpoint_epoch_250.pth.tar)')])
    return resolve_run_paths(args, CHECKPOINT, f'search-{args.metric}')


def trained_split(meta, args, n):
    """(digest, description) of the train part the supernet was trained on, or None where unknown: recorded
    by stage 1; derived from the args of older stage-1 checkpoints; for a reference checkpoint (no args) the
    NAS-Bench-201 file of its CIFAR dataset, which the reference always trains on."""
    if 'split_digest' in meta:
        return meta['split_digest'], meta.get('split', 'its recorded split')
    if meta.get('args'):
        old = argparse.Namespace(dataset=args.dataset, split=None, split_file=None, split_seed=None,
                                 train_portion=None, split_data=meta['args'].get('split_data', 1))
        inherit_split(old, meta['args'])
        split = resolve_split(old)
    elif args.dataset in ('cifar10', 'cifar100'):
        split = resolve_split(argparse.Namespace(dataset=args.dataset, split='nb201', split_data=1))
    else:
        return None
    return split_digest(split.indices(n)[0]), split.describe()


def check_split(args, meta, data, notes):
    """One error line when the search would score on another split than the supernet was trained on (its
    "valid" images would include training images), unless --force_split."""
    if not meta.get('args'):
        notes.append(f'{args.model_path} is a reference checkpoint (no args): scoring on {data.split.describe()}')
    else:
        notes.append(f'scoring on {data.split.describe()}')
    expected = trained_split(meta, args, len(data.train))
    if expected is None:
        notes.append(f'the split {args.model_path} was trained on is unknown (not checked)')
    elif expected[0] != data.split_digest:
        message = (f'{args.model_path} was trained on {expected[1]}, but this search scores on '
                   f'{data.split.describe()}, whose valid part overlaps the supernet\'s training images')
        if not args.force_split:
            raise UserError(f'{message}; drop the split flags to use the supernet\'s split, or pass --force_split')
        notes.append(f'warning: {message} (--force_split)')


def build_context(args, device, notes=None):
    """Load checkpoints and data; everything that can fail on user input fails here. Lines worth logging
    (which split is scored) are appended to `notes`."""
    model, meta, space = load_supernet(args.model_path, args)
    args.space = space.name
    init_model = None
    if args.metric in NEEDS_INIT:
        if not args.init_model_path:
            raise UserError(f'--metric {args.metric} needs --init_model_path '
                            '(the checkpoint_epoch_0.pth.tar of stage 1)')
        init_model = load_init_supernet(args.init_model_path, args, model)
    fill_inherited(args, meta.get('args', {}))
    data = load_search_data(args)
    check_split(args, meta, data, notes if notes is not None else [])
    data = data.resident(device)
    if data.num_classes != model.num_classes:
        raise UserError(f'{args.model_path} has {model.num_classes} classes but --dataset {args.dataset} has '
                        f'{data.num_classes}; pass the dataset the supernet was trained on')
    fmt = memory_format(args.channels_last)
    model = model.to(device).to(memory_format=fmt).eval()
    if args.test_batch_size is None:
        args.test_batch_size = 64 if device.type == 'cpu' else 512
    if init_model is not None:
        init_model = init_model.to(device)
    return ScoringContext(model=model, init_model=init_model, data=data, device=device, seed=args.seed,
                          stds=tuple(args.stds), batch_size=args.batch_size, test_batch_size=args.test_batch_size,
                          max_train_img_size=args.max_train_img_size, max_val_img_size=args.max_val_img_size,
                          acc_train_img_size=args.acc_train_img_size, acc_val_img_size=args.acc_val_img_size,
                          wlm_weight=args.wlm_weight, acc_weight=args.acc_weight, bn_momentum=args.bn_momentum,
                          perturb=args.perturb, memory_format=fmt, precision=args.score_precision, space=space,
                          bn_per_candidate=args.bn_images == 'per_candidate')


def build_budget(args, ctx, notes):
    """The cost budget of --flops_limit / --params_limit (None without them); one error line when even the space's
    cheapest cell is over a limit."""
    budget = make_budget(args, ctx.space, ctx.model.num_classes, tuple(ctx.data.train.images.shape[-2:]))
    if budget is not None:
        budget.check_reachable()
        notes.append(f'cost limits: {budget}')
    return budget


def within_budget(todo, budget, notes):
    """Given cells over a cost limit are not scored either (the log names them)."""
    if budget is None:
        return todo
    kept = []
    for name, cand in todo:
        excess = budget.excess(budget.measure(cand))
        if excess:
            notes.append(f'{name} not scored: {excess}')
        else:
            kept.append((name, cand))
    return kept


def refuse_leftovers(save):
    """A new search never overwrites the outputs of another one (kept without its checkpoint)."""
    found = [name for name in SEARCH_OUTPUTS if (Path(save) / name).exists()]
    if found:
        raise UserError(f'{save} holds search outputs ({", ".join(found)}) but no search checkpoint to resume; pass '
                        '--restart to discard them and start over, or choose another --save')


# --- scoring given candidates -------------------------------------------------------------------------

def read_candidates(args, space):
    """(name, candidate) for --candidates lines and --arch values, in the supernet's space."""
    out = []
    if args.candidates:
        lines = genotypes.read_text_file(args.candidates, '--candidates', 'a text file of candidates',
                                         'pass a text file with one candidate per line').splitlines()
        for n, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith('#'):
                try:
                    out.append((f'line {n}', space.parse(line)))
                except GenotypeError as e:
                    raise UserError(f'--candidates {args.candidates} line {n}: {e}')
        if not out:
            raise UserError(f'--candidates {args.candidates} holds no candidate (only comments or blank lines); '
                            'put one candidate per line (28 ints for DARTS; 6 ints or an arch string for NB201)')
    for arch in args.arch or []:
        out.append((arch, space.resolve_arch(arch)))
    return out


@locks_released
def main(args):
    dist = Dist()
    device = choose_device(args.device, dist.local_rank, share=True)    # more ranks than GPUs: they share them
    seed_everything(args.seed)
    notes = []
    ctx = build_context(args, device, notes)
    budget = build_budget(args, ctx, notes)
    todo = read_candidates(args, ctx.space) if (args.candidates or args.arch) else None
    if todo is not None:
        todo = within_budget(todo, budget, notes)
    dist.init(device, backend='gloo')   # ranks exchange only scores and states, on the CPU: they may share a GPU
    evo = Evolution(args.max_epochs, args.population_num, args.select_num, args.mutation_num, args.crossover_num,
                    args.m_prob, seed=args.seed, space=ctx.space, budget=budget)
    ckpt_path = args.resume or os.path.join(args.save, CHECKPOINT)
    if args.resume and not os.path.isfile(args.resume) and not restarts_from_beginning(args.resume, CHECKPOINT):
        raise UserError(f'--resume {args.resume} does not exist; pass the {CHECKPOINT} of a search run directory')
    if args.restart and args.resume:
        raise UserError('--restart starts over and --resume continues: pass one of them')
    dist.from_main(lambda: lock_run_dir(args.save))      # rank 0 alone writes
    resuming = todo is None and not args.restart and dist.from_main(lambda: os.path.isfile(ckpt_path))
    if todo is None and not resuming and not args.restart:
        dist.from_main(lambda: refuse_leftovers(args.save))
    if resuming:      # rank 0 reads it; run_search hands the state to the other ranks
        state = dist.from_main(lambda: read_search(ckpt_path, args, SCORE_FLAGS))
        if dist.is_main:
            evo.load_state_dict(state)
    run = Run(args.save, args, is_main=dist.is_main)
    for note in notes:
        logger.info('%s', note)
    if todo is not None:
        logger.info('scoring %d given candidates with %s on %d process(es)', len(todo), args.metric, dist.world_size)
        results = score_given(ctx, args, run, todo, dist)
        run.close()
        dist.close()
        return results
    if resuming and dist.is_main:
        run.metrics_file.write_text(''.join(json.dumps(s) + '\n' for s in evo.history))
        logger.info('resumed from %s%s: generation %d, %d candidates scored; candidates not yet scored are scored '
                    'now', ckpt_path, ' (-r/--refresh: resuming is the default here; --restart starts over)'
                    if args.refresh else '', evo.generation + 1, len(evo.scores))
    elif args.restart and dist.is_main:
        discarded = [p.name for p in map(Path(args.save).joinpath, SEARCH_OUTPUTS) if p.exists()]
        for name in discarded:
            (Path(args.save) / name).unlink()
        logger.info('--restart: starting a new search%s', f' (discarded {", ".join(discarded)})' if discarded else '')
    elif args.refresh:
        logger.info('-r/--refresh: no search checkpoint in %s, starting a new search', args.save)
    logger.info('search: metric %s, %d generations x %d candidates, supernet %s, %d process(es)', args.metric,
                args.max_epochs, args.population_num, args.model_path, dist.world_size)
    result = run_search(ctx, args, run, evo, dist, SCORE_FLAGS)
    run.close()
    dist.close()
    if result is None:
        return None
    path, best, info = result
    geno = ctx.space.decode(best)
    logger.info('best candidate %s score %.6g -> %s', cand_key(best), info['score'], path)
    print(geno)
    return {'genotype': geno, 'score': info['score'], 'path': str(path), 'top': evo.best(10)}


if __name__ == '__main__':
    run_cli(main, parse_args)
