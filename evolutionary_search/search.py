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
import json
import os
import sys
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

from data import add_data_args  # noqa: E402
from evolutionary_search import context  # noqa: E402
from evolutionary_search.budget import NETWORKS, make_budget, parse_amount  # noqa: E402
from evolutionary_search.evolution import Evolution, cand_key  # noqa: E402
from evolutionary_search.metrics import METRICS, formula, reduced_to_one_term  # noqa: E402
from evolutionary_search.runner import CHECKPOINT, read_search, run_search, score_given  # noqa: E402
from evolutionary_search.supernet_io import INHERITED  # noqa: E402
from spaces.base import read_candidates_file  # noqa: E402
from devices import add_deterministic_flag, choose_device  # noqa: E402
from distributed import Dist  # noqa: E402
from inputs import SEED_MAX, numbers  # noqa: E402
from seeding import seed_everything  # noqa: E402
from utils import (ArgumentParser, Run, UserError, add_noop_flags, lock_run_dir, locks_released, logger,  # noqa: E402
                   pop_noop_flags, require, resolve_run_paths, restarts_from_beginning, run_cli)

# Flags that change scores or proposals: a resumed search must use the same values.
SCORE_FLAGS = ['metric', 'stds', 'seed', 'max_train_img_size', 'max_val_img_size', 'wlm_weight', 'acc_weight',
               'batch_size', 'bn_momentum', 'perturb', 'score_precision', 'acc_train_img_size', 'acc_val_img_size',
               'population_num', 'select_num', 'mutation_num', 'crossover_num', 'm_prob', 'dataset', 'split_data',
               'split', 'train_portion', 'split_seed', 'split_file', 'random_label', 'train_subset', 'valid_subset',
               'bn_images', 'flops_limit', 'params_limit', 'budget_network', 'budget_channels', 'budget_layers']
SEARCH_OUTPUTS = (CHECKPOINT, 'metrics.jsonl', 'genotype.json')     # what --restart discards
NOOP_FLAGS = {'cutout': None, 'cutout_length': int}      # reference flags that do nothing in its search either


def add_search_args(p):
    g = p.add_argument_group('search')
    g.add_argument('--metric', default='wlm', help=f'one of {", ".join(METRICS)}')
    g.add_argument('--seed', type=int, default=3, help='seed of the evolution, BN batches and weight noise')
    g.add_argument('--save', default=None, help='run directory; None means runs/search-<metric>-<time>')
    g.add_argument('-r', '--refresh', action='store_true',
                   help='resume the search checkpoint in --save, as the reference; what happens anyway without it')
    g.add_argument('--resume', default=None, help='search checkpoint (or its run directory) to continue')
    g.add_argument('--restart', action='store_true',
                   help='discard the search (checkpoint, generations, genotype.json) in --save and start over; '
                        'without it a search is never overwritten')
    g.add_argument('--stop_after', type=int, default=0,
                   help='stop after scoring N candidates in this invocation (resumable; 0: off)')
    g.add_argument('--force_split', action='store_true',
                   help='score even when the split differs from the one the supernet was trained on (its "valid" '
                        'images then include training images)')
    g.add_argument('--bn_images', default='shared', choices=['shared', 'per_candidate'],
                   help='BN recalibration images: shared: the same for every candidate (seeded by --seed); '
                        'per_candidate: drawn from (seed, candidate), like the reference\'s fresh batches per '
                        'candidate')
    add_deterministic_flag(g)
    return g


def add_evolution_args(p):
    g = p.add_argument_group('evolution')
    g.add_argument('--max_epochs', type=int, default=20, help='generations')
    g.add_argument('--population_num', type=int, default=50, help='candidates per generation')
    g.add_argument('--select_num', type=int, default=10, help='parents kept (elitist top-k)')
    g.add_argument('--mutation_num', type=int, default=25, help='mutations per generation')
    g.add_argument('--crossover_num', type=int, default=25, help='crossovers per generation')
    g.add_argument('--m_prob', type=float, default=0.1, help='per-edge mutation probability')
    g = p.add_argument_group('given cells (scored instead of searching)')
    g.add_argument('--candidates', default=None,
                   help='file of candidates (one per line: 28 ints for darts; an arch string or 6 ints for '
                        'nb201; "#" starts a comment) to score instead of searching')
    g.add_argument('--arch', action='append', default=None,
                   help='cell to score instead of searching (repeatable): darts: named genotype or genotype '
                        '.json; nb201: arch string or the genotype.json of an nb201 search')
    return g


def add_budget_args(p):
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
    return g


def get_args_parser():
    p = ArgumentParser(description='Stage 2: evolutionary search (GeNAS).')
    add_search_args(p)
    context.add_scoring_args(p)
    add_data_args(p)
    p.set_defaults(split=None, **{k: None for k in INHERITED})    # not given: the supernet's own data and split
    add_evolution_args(p)
    add_budget_args(p)
    add_noop_flags(p, NOOP_FLAGS)
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    pop_noop_flags(args)
    if args.metric not in METRICS:
        raise UserError(f'unknown --metric {args.metric!r}; choose one of {", ".join(METRICS)}')
    args = context.check_scoring_args(args, [args.metric])
    warn_reduced_metric(args)
    check_numbers(args)
    require([(getattr(args, f) >= 1, f'--{f} must be >= 1') for f in ('max_epochs', 'population_num', 'select_num')])
    require([(args.mutation_num + args.crossover_num <= args.population_num,
              '--mutation_num + --crossover_num must not exceed --population_num'),
             (args.select_num <= args.population_num,
              f'--select_num {args.select_num} exceeds --population_num {args.population_num}: the parents are '
              'chosen among the population; lower --select_num')])
    return resolve_run_paths(args, CHECKPOINT, f'search-{args.metric}')


def warn_reduced_metric(args):
    """A combined metric whose weight is 0 (the reference's default) scores one term: say so in one line."""
    flag = reduced_to_one_term(args.metric, args.wlm_weight, args.acc_weight)
    if flag and int(os.environ.get('RANK', 0)) == 0:
        print(f'warning: --metric {args.metric} with --{flag} 0 scores '
              f'{formula(args.metric, args.wlm_weight, args.acc_weight, args.stds)} alone; pass --{flag} > 0 '
              '(the paper: --wlm_weight 16) to score the combination', file=sys.stderr)


def check_numbers(args):
    """The ranges of stage 2's own numbers (the scoring flags are checked by context.check_scoring_args)."""
    numbers([('--seed', args.seed, dict(lo=0, hi=SEED_MAX)),
             ('--mutation_num', args.mutation_num, dict(lo=0)), ('--crossover_num', args.crossover_num, dict(lo=0)),
             ('--m_prob', args.m_prob, dict(lo=0, hi=1, fix='it is a probability per edge')),
             ('--stop_after', args.stop_after, dict(lo=0, fix='0 means do not stop early')),
             # None means stage 3's default; 0 would silently mean it too
             ('--budget_channels', args.budget_channels, dict(lo=1, fix='leave it out for stage 3\'s default')),
             ('--budget_layers', args.budget_layers, dict(lo=1, fix='leave it out for stage 3\'s default'))])


def run_kind(args):
    """What --save holds once this run wrote into it: given cells scored, or an evolution."""
    return 'scoring' if args.candidates or args.arch else 'search'


def search_scoring(args, device, notes=None):
    """The supernet(s) and data of the search as a context.Scoring (its settings: args with the resolved space,
    test batch size and data split, what the run directory records)."""
    scoring = context.build_context(args, device, [args.metric], force_split=args.force_split, notes=notes,
                                    bn_per_candidate=args.bn_images == 'per_candidate')
    scoring.settings.device_type = device.type          # scores depend on it (see runner.check_device)
    return scoring


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
    out = [(f'line {c.line}', c.candidate) for c in read_candidates_file(args.candidates, space)] \
        if args.candidates else []
    return out + [(arch, space.resolve_arch(arch)) for arch in args.arch or []]


class Prepared(NamedTuple):
    scoring: context.Scoring      # the context and the resolved settings
    budget: object                # budget.Budget or None
    todo: list                    # (name, candidate) given to score instead of searching, or None
    notes: list                   # lines to log once the run directory is open


def prepare(args, device):
    """Everything that can fail on user input, before anything is written."""
    notes = []
    scoring = search_scoring(args, device, notes)
    budget = build_budget(scoring.settings, scoring.ctx, notes)
    todo = read_candidates(args, scoring.ctx.space) if (args.candidates or args.arch) else None
    if todo is not None:
        todo = within_budget(todo, budget, notes)
    return Prepared(scoring, budget, todo, notes)


def open_search(s, dist, evo, searching):
    """Lock --save and load the search checkpoint to resume, where there is one; returns (resuming, its path)."""
    ckpt_path = s.resume or os.path.join(s.save, CHECKPOINT)
    if s.resume and not os.path.isfile(s.resume) and not restarts_from_beginning(s.resume, CHECKPOINT):
        raise UserError(f'--resume {s.resume} does not exist; pass the {CHECKPOINT} of a search run directory')
    if s.restart and s.resume:
        raise UserError('--restart starts over and --resume continues: pass one of them')
    dist.from_main(lambda: lock_run_dir(s.save, run_kind(s)))      # rank 0 alone writes
    resuming = searching and not s.restart and dist.from_main(lambda: os.path.isfile(ckpt_path))
    if searching and not resuming and not s.restart:
        dist.from_main(lambda: refuse_leftovers(s.save))
    if resuming:      # rank 0 reads it; run_search hands the state to the other ranks
        state = dist.from_main(lambda: read_search(ckpt_path, s, SCORE_FLAGS))
        if dist.is_main:
            evo.load_state_dict(state)
    return resuming, ckpt_path


def start_search(s, run, evo, dist, resuming, ckpt_path):
    """Log how the search starts; --restart discards the outputs of the search before."""
    if resuming and dist.is_main:
        run.metrics_file.write_text(''.join(json.dumps(h) + '\n' for h in evo.history))
        logger.info('resumed from %s%s: generation %d, %d candidates scored; candidates not yet scored are scored '
                    'now', ckpt_path, ' (-r/--refresh: resuming is the default here; --restart starts over)'
                    if s.refresh else '', evo.generation + 1, len(evo.scores))
    elif s.restart and dist.is_main:
        discarded = [p.name for p in map(Path(s.save).joinpath, SEARCH_OUTPUTS) if p.exists()]
        for name in discarded:
            (Path(s.save) / name).unlink()
        logger.info('--restart: starting a new search%s', f' (discarded {", ".join(discarded)})' if discarded else '')
    elif s.refresh:
        logger.info('-r/--refresh: no search checkpoint in %s, starting a new search', s.save)
    logger.info('search: metric %s (score = %s), %d generations x %d candidates, supernet %s, %d process(es)',
                s.metric, formula(s.metric, s.wlm_weight, s.acc_weight, s.stds), s.max_epochs, s.population_num,
                s.model_path, dist.world_size)


def search_summary(result, space, evo):
    """main's return value on rank 0 (None elsewhere, or when stopped early); prints the best genotype."""
    if result is None:
        return None
    geno = space.decode(result.candidate)
    logger.info('best candidate %s score %.6g -> %s', cand_key(result.candidate), result.info['score'], result.path)
    print(geno)
    return {'genotype': geno, 'score': result.info['score'], 'path': str(result.path), 'top': evo.best(10)}


@locks_released
def main(args):
    dist = Dist()
    # More ranks than GPUs share them; scores must not depend on which cuDNN algorithm a rank timed fastest.
    device = choose_device(args.device, dist.local_rank, share=True, deterministic=args.deterministic, benchmark=False)
    seed_everything(args.seed)
    ready = prepare(args, device)
    ctx, s = ready.scoring.ctx, ready.scoring.settings
    # Ranks exchange only scores and states, on the CPU: they may share a GPU. The group ends on every exit path.
    with closing(dist.init(device, backend='gloo')):
        evo = Evolution(s.max_epochs, s.population_num, s.select_num, s.mutation_num, s.crossover_num,
                        s.m_prob, seed=s.seed, space=ctx.space, budget=ready.budget)
        resuming, ckpt_path = open_search(s, dist, evo, searching=ready.todo is None)
        run = Run(s.save, s, is_main=dist.is_main)
        for note in ready.notes:
            logger.info('%s', note)
        if ready.todo is not None:
            logger.info('scoring %d given candidates with %s on %d process(es)', len(ready.todo), s.metric,
                        dist.world_size)
            results = score_given(ctx, s, run, ready.todo, dist)
        else:
            start_search(s, run, evo, dist, resuming, ckpt_path)
            results = search_summary(run_search(ctx, s, run, evo, dist, SCORE_FLAGS), ctx.space, evo)
        run.close()
    return results

def resume_hint(args):
    if run_kind(args) == 'scoring':
        return 'rerun the same command'
    return f'rerun the same command (it resumes from {Path(args.save) / CHECKPOINT})'


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=resume_hint)
