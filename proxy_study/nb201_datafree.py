"""The data-free proxy study over NAS-Bench-201: every metric that needs no trained supernet and no images
(params, macs, synflow) on all 15,625 cells, against the benchmark's 200-epoch validation accuracy of
each dataset, offline, on the CPU.

    python3 proxy_study/nb201_datafree.py --save runs/nb201-datafree                 # all cells, one process
    torchrun --standalone --nproc_per_node 2 proxy_study/nb201_datafree.py --save runs/nb201-datafree
    python3 proxy_study/nb201_datafree.py --tiny --save runs/nb201-datafree-tiny     # 40 cells, about a minute

Each cell's stand-alone network (spaces/nb201_model.py, the benchmark's C = 16, N = 5) is scored with the
classifier and image size of each dataset: cifar10 10 classes, cifar100 100, imagenet16-120 120 classes
(32, 32 and 16 pixels), initial weights seeded by (--seed, cell) (spaces/nb201_scores.py). Writes into
--save: scores.jsonl (one line per cell, every dataset's scores), runs.jsonl (one line per invocation:
command, machine, wall time, load), report.md, report.json, scatter_<dataset>.png and taus_<dataset>.png.
Rerun the same command to resume: scored cells are skipped (a line cut short by a kill is dropped). Under
torchrun rank r scores the cells i with i % world == r (one torch thread per process, so the scores do not
depend on the number of processes) and rank 0 gathers them and writes the report.
"""
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from proxy_study import stats  # noqa: E402
from proxy_study.analysis import fmt, plot_taus  # noqa: E402
from proxy_study.records import read_jsonl  # noqa: E402
from spaces import nb201, nb201_scores, nb201_truth  # noqa: E402
from devices import ISA_FLAGS, cpu_model_and_flags  # noqa: E402
from distributed import Dist  # noqa: E402
from inputs import SEED_MAX, json_document, numbers, writable_dir  # noqa: E402
from utils import (ArgumentParser, UserError, atomic_write_text, changed_flags, lock_run_dir, locks_released,  # noqa: E402
                   logger, require, run_cli, setup_logging)

SCORES, SETTINGS, RUNS = 'scores.jsonl', 'settings.json', 'runs.jsonl'
TINY_CELLS = 40
ROOT = Path(__file__).resolve().parents[1]


def get_args_parser():
    p = ArgumentParser(description='Data-free proxy study over NAS-Bench-201: params, macs and synflow of every '
                                   'cell against the benchmark\'s 200-epoch validation accuracy, per dataset.')
    p.add_argument('--ground_truth', default=str(nb201_truth.SHIPPED),
                   help='CSV of arch plus one accuracy column (%%) per dataset (default: the shipped NAS-Bench-201 '
                        'validation accuracies, via NASLib)')
    p.add_argument('--datasets', default=','.join(nb201_truth.DATASETS), help='comma-separated datasets to report')
    p.add_argument('--num_cells', type=int, default=0,
                   help='score a seeded sample of this many of the ground truth\'s cells (0: all of them)')
    p.add_argument('--sample_seed', type=int, default=0, help='seed of that sample')
    p.add_argument('--tiny', action='store_true', help=f'{TINY_CELLS} sampled cells, 1000 resamples (for tests)')
    p.add_argument('--seed', type=int, default=0, help='seed of the networks\' initial weights (synflow)')
    p.add_argument('--resamples', type=int, default=2000, help='bootstrap resamples (>= 1000)')
    p.add_argument('--bootstrap_seed', type=int, default=0, help='seed of the bootstrap resamples')
    p.add_argument('--top_fractions', default='0.01,0.05,0.1', help='precision@top: the best fractions of cells')
    p.add_argument('--log_every', type=int, default=500, help='log progress every N cells')
    p.add_argument('--save', required=True, help='run directory (rerun the same command to resume)')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        fractions = [float(f) for f in args.top_fractions.split(',') if f.strip()]
    except ValueError:
        raise UserError(f'--top_fractions {args.top_fractions!r}: give fractions such as 0.01,0.05,0.1')
    require([(args.resamples >= 1000, '--resamples must be >= 1000 for a 95% interval'),
             (fractions and all(0 < f <= 1 for f in fractions), '--top_fractions must lie in (0, 1]'),
             (args.num_cells >= 0, '--num_cells must be >= 0 (0: all cells)'),
             (args.log_every >= 1, '--log_every must be >= 1')])
    numbers([(f'--{k}', getattr(args, k), dict(lo=0, hi=SEED_MAX)) for k in ('seed', 'sample_seed', 'bootstrap_seed')])
    writable_dir('--save', args.save)
    return args


@dataclass(frozen=True)
class Plan:
    datasets: list              # study names of the reported datasets
    fractions: list             # precision@top fractions
    num_cells: int              # 0: all
    resamples: int


def plan_of(args):
    datasets = list(dict.fromkeys(nb201_truth.study_dataset(d) for d in args.datasets.split(',') if d.strip()))
    if not datasets:
        raise UserError('--datasets is empty; name one or more of ' + ', '.join(nb201_truth.DATASETS))
    return Plan(datasets, [float(f) for f in args.top_fractions.split(',') if f.strip()],
                TINY_CELLS if args.tiny and not args.num_cells else args.num_cells,
                1000 if args.tiny else args.resamples)


def study_cells(truth, num_cells, sample_seed):
    """The ground truth's cells in code-number order, or a seeded sample of them (in sample order)."""
    cells = sorted(truth.candidates, key=nb201.code_number)
    if num_cells and num_cells < len(cells):
        cells = random.Random(sample_seed).sample(cells, num_cells)
    if len(cells) < 3:
        raise UserError(f'the study has {len(cells)} cell(s); a rank correlation needs at least 3: add cells to '
                        f'{truth.path} or raise --num_cells')
    return [tuple(c) for c in cells]


# --- scores file ---------------------------------------------------------------------------------------

def score_files(save):
    return [save / SCORES] + sorted(save.glob('scores.rank*.jsonl'))


def drop_cut_lines(save):
    """A kill while a line was written leaves it without its newline: cut every scores file back to its last
    complete line."""
    for path in score_files(save):
        if path.exists():
            text = path.read_text()
            if text and not text.endswith('\n'):
                atomic_write_text(path, text[:text.rfind('\n') + 1])


def prepare(save, settings):
    """Rank 0: lock the run directory, refuse other scoring flags, drop cut lines."""
    lock_run_dir(save, 'nb201-datafree')
    path = save / SETTINGS
    if path.exists():
        saved = json_document('--save', path, {}, 'the settings.json of a data-free study')
        changed = changed_flags(saved, settings)
        if changed:
            raise UserError(f'{save} holds scores made with other flags ({"; ".join(changed)}); use the same flags '
                            'to resume, or another --save')
    atomic_write_text(path, json.dumps(settings, indent=2) + '\n')
    drop_cut_lines(save)


def read_done(save):
    """{candidate tuple: line dict} of every scores file in the run directory."""
    done = {}
    for path in score_files(save):
        if path.exists():
            for n, rec in read_jsonl(path, 'scores'):
                try:
                    done[tuple(nb201.check_candidate(rec['candidate']))] = rec
                except (KeyError, nb201.NB201Error):
                    raise UserError(f'{path} line {n} has no NB201 "candidate"; delete that line and rerun')
    return done


def score_line(cand, seed):
    scores = nb201_scores.datafree_scores(cand, seed)
    return json.dumps({'candidate': list(cand), 'arch': nb201.to_arch_string(cand), 'seed': seed, **scores})


def score_mine(save, cells, done, dist, args):
    """Score this rank's share of the cells not yet done, appending to scores.rank<r>.jsonl."""
    mine = [c for i, c in enumerate(cells) if i % dist.world_size == dist.rank and c not in done]
    logger.info('rank %d: %d of its cells to score (%d done of %d)', dist.rank, len(mine), len(done), len(cells))
    t0 = time.time()
    with open(save / f'scores.rank{dist.rank}.jsonl', 'a') as out:
        for n, cand in enumerate(mine, 1):
            out.write(score_line(cand, args.seed) + '\n')
            out.flush()
            if n % args.log_every == 0 or n == len(mine):
                logger.info('rank %d: %d/%d cells (%.1f ms per cell)', dist.rank, n, len(mine),
                            1000 * (time.time() - t0) / n)
    return len(mine)


def gather(save, cells):
    """Rank 0: every scores file merged into scores.jsonl (ordered as the cells, then any others), part files
    removed; returns the lines of the study's cells."""
    done = read_done(save)
    order = {c: i for i, c in enumerate(cells)}
    keys = sorted(done, key=lambda c: (order.get(c, len(order)), nb201.code_number(c)))
    atomic_write_text(save / SCORES, ''.join(json.dumps(done[c]) + '\n' for c in keys))
    for path in score_files(save)[1:]:
        path.unlink()
    missing = [c for c in cells if c not in done]
    if missing:
        raise UserError(f'{len(missing)} cells are not scored (e.g. {nb201.to_arch_string(missing[0])}); rerun the '
                        'same command to finish')
    return [done[c] for c in cells]


# --- analysis ------------------------------------------------------------------------------------------

@dataclass
class Row:
    metric: str
    cells: int
    tau: stats.Estimate
    rho: stats.Estimate
    precision: dict             # fraction -> Estimate

    def as_dict(self):
        return {'metric': self.metric, 'cells': self.cells, 'tau': self.tau.as_dict(), 'rho': self.rho.as_dict(),
                'precision_at_top': {str(f): e.as_dict() for f, e in self.precision.items()}}


def analyse_dataset(lines, truth, dataset, plan, args):
    """[Row] per metric: the cells' scores on `dataset` against its ground truth, bootstrap intervals from the
    same seeded resamples for every statistic."""
    acc = np.array([truth.value(rec['candidate'], dataset) for rec in lines])
    kw = dict(n=len(lines), resamples=plan.resamples, seed=args.bootstrap_seed)
    rows = []
    for metric in nb201_scores.METRICS:
        score = np.array([rec[dataset][metric] for rec in lines], float)

        def precision(a, b, fraction):
            return stats.precision_at_top(a, b, fraction)
        rows.append(Row(metric, len(lines), stats.estimate(stats.paired(stats.kendall_tau, score, acc), **kw),
                        stats.estimate(stats.paired(stats.spearman_rho, score, acc), **kw),
                        {f: stats.estimate(stats.paired(lambda a, b, f=f: precision(a, b, f), score, acc), **kw)
                         for f in plan.fractions}))
    return acc, rows


def plot_scatter(path, dataset, lines, acc, rows):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), sharey=True)
    for ax, r in zip(np.atleast_1d(axes), rows):
        score = np.array([rec[dataset][r.metric] for rec in lines], float)
        ax.scatter(score, acc, s=2, alpha=0.4, rasterized=True)
        if np.all(score > 0) and score.max() / score.min() > 1e3:
            ax.set_xscale('log')
        ax.set_xlabel(f'{r.metric} ({nb201_scores.NUM_CLASSES[dataset]} classes)')
        ax.set_title(f'{r.metric}: tau {fmt(r.tau)}', fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel(f'{dataset} validation accuracy (%)')
    fig.suptitle(f'NAS-Bench-201, {dataset}: {len(lines)} cells', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run record and the report ------------------------------------------------------------------------

def machine():
    """CPU model and ISA flags (devices.cpu_model_and_flags), core count, torch and Python versions."""
    model, isa = cpu_model_and_flags()
    return {'cpu': model, 'isa': list(isa), 'cores': os.cpu_count(), 'torch': torch.__version__,
            'python': platform.python_version()}


def load_average():
    return list(os.getloadavg()) if hasattr(os, 'getloadavg') else None


def command_line(world):
    """How this process was started, as one would type it (torchrun hides its own part from sys.argv)."""
    argv = ' '.join(sys.argv)
    return f'torchrun --standalone --nproc_per_node {world} {argv}' if world > 1 else f'python3 {argv}'


def shown_path(path):
    """A path inside the repository relative to its root (a report reads the same on every machine)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def record_run(save, start, load_before, scored, world):
    line = {'command': command_line(world), 'processes': world, 'threads_per_process': torch.get_num_threads(),
            'cells_scored': scored, 'wall_s': round(time.time() - start, 1), 'load_before': load_before,
            'load_after': load_average(), 'machine': machine(), 'finished': time.strftime('%Y-%m-%d %H:%M:%S')}
    with open(save / RUNS, 'a') as f:
        f.write(json.dumps(line) + '\n')
    return [rec for _, rec in read_jsonl(save / RUNS, 'runs')]


def table(rows, plan):
    pct = [f'{100 * f:g}%' for f in plan.fractions]
    lines = ['| metric | cells | Kendall tau | Spearman rho | ' + ' | '.join(f'precision@top-{p}' for p in pct) + ' |',
             '|---|---|---|---|' + '---|' * len(pct)]
    for r in rows:
        lines.append(f'| `{r.metric}` | {r.cells} | {fmt(r.tau)} | {fmt(r.rho)} | '
                     + ' | '.join(fmt(r.precision[f]) for f in plan.fractions) + ' |')
    return lines


MEANING = [
    '## What the numbers mean', '',
    '- Ground truth: {what}, one value per cell from `{path}`. {seeds_note}',
    '- Every cell is scored on its stand-alone network as spaces/nb201_model.py builds it (the benchmark\'s '
    'macro skeleton, C = 16, N = 5 cells per stage) at initialisation, with the classifier and input size of the '
    'dataset: cifar10 10 classes and 32x32, cifar100 100 classes and 32x32, imagenet16-120 120 classes and 16x16. '
    '`params` and `macs` therefore differ between datasets by the classifier (and `macs` by the input size), '
    'which shifts every cell alike and leaves their ranking unchanged.',
    '- `params`: parameter elements. `macs`: multiply-adds of one forward pass of one image as '
    'torch.utils.flop_counter counts them: convolutions and the classifier\'s matrix product only (no pooling, '
    'BN, ReLU or bias additions). NAS-Bench-201\'s own FLOPs count more, so they are not the same numbers; '
    'within one dataset both grow with the same convolutions.',
    '- `synflow` (evolutionary_search/zero_cost.py): the sum over all parameters of theta * dR/dtheta with every '
    'weight replaced by its absolute value, float64, R the sum of the logits of one all-ones input, BN in eval '
    'mode; initial weights seeded by (seed {seed}, cell).',
    '- Kendall tau-b and Spearman rho between score and accuracy; precision@top-p: the share of the best p of '
    'cells by accuracy that are also among the best p by the score (ties broken at random, in expectation). '
    '95% percentile bootstrap intervals over cells ({resamples} resamples, seed {bseed}, the same resamples for '
    'every statistic); they cover the choice of cells, not the noise of the single training run behind each '
    'ground-truth value, which this file cannot show.',
    '- Nothing was tuned: the metrics, their settings and the statistics are fixed before any ground-truth '
    'value is read. Published values for these proxies on NAS-Bench-201 are compared in docs/nas-bench-201.md.']


def run_section(runs, cells):
    lines = ['## The run', '']
    for r in runs:
        m = r['machine']
        lines.append(f'- `{r["command"]}`: {r["cells_scored"]} cells scored in {r["wall_s"]} s wall time on '
                     f'{r["processes"]} process(es) x {r["threads_per_process"]} thread(s); CPU {m["cpu"]} '
                     f'({m["cores"]} cores, ISA {", ".join(m["isa"]) or "none of " + "/".join(ISA_FLAGS)}), '
                     f'torch {m["torch"]}; load average before {r["load_before"]}, after {r["load_after"]} '
                     f'(finished {r["finished"]}).')
    lines += ['', f'{cells} cells in all. The machine may have been shared: wall times are not clean timings.']
    return lines


def markdown(results, truth, plan, args, runs, cells):
    protocol = truth.protocol()
    lines = ['# NAS-Bench-201, data-free proxies against the benchmark\'s validation accuracy', '',
             f'{cells} cells; ground truth: {protocol["what"]}.', '']
    for dataset, (acc, rows) in results.items():
        lines += [f'## {dataset} ({nb201_scores.NUM_CLASSES[dataset]} classes, '
                  f'{nb201_scores.IMAGE_SIZE[dataset]}x{nb201_scores.IMAGE_SIZE[dataset]} input)', '']
        lines += table(rows, plan)
        lines += ['', f'Validation accuracy over the cells: mean {acc.mean():.2f}%, range {acc.min():.2f} .. '
                  f'{acc.max():.2f}%.', '', f'![scatter](scatter_{dataset}.png) ![taus](taus_{dataset}.png)', '']
    note = protocol.get('seeds', '')
    lines += [s.format(what=protocol['what'], path=shown_path(truth.path), seeds_note=note[0].upper() + note[1:] + '.',
                       seed=args.seed, resamples=plan.resamples, bseed=args.bootstrap_seed) for s in MEANING]
    lines += [''] + run_section(runs, cells)
    return '\n'.join(lines) + '\n'


def write_report(save, lines, truth, plan, args, runs):
    results = {d: analyse_dataset(lines, truth, d, plan, args) for d in plan.datasets}
    for d, (acc, rows) in results.items():
        plot_scatter(save / f'scatter_{d}.png', d, lines, acc, rows)
        plot_taus(save / f'taus_{d}.png', None, rows)
    doc = {'cells': len(lines), 'ground_truth': shown_path(truth.path), 'protocol': truth.protocol(),
           'network': {'channels': nb201_scores.CHANNELS, 'layers': nb201_scores.LAYERS,
                       'num_classes': {d: nb201_scores.NUM_CLASSES[d] for d in plan.datasets},
                       'image_size': {d: nb201_scores.IMAGE_SIZE[d] for d in plan.datasets}},
           'seed': args.seed, 'bootstrap': {'resamples': plan.resamples, 'seed': args.bootstrap_seed, 'level': 0.95},
           'top_fractions': plan.fractions, 'runs': runs,
           'datasets': {d: [r.as_dict() for r in rows] for d, (_, rows) in results.items()}}
    atomic_write_text(save / 'report.json', json.dumps(doc, indent=2) + '\n')
    atomic_write_text(save / 'report.md', markdown(results, truth, plan, args, runs, len(lines)))
    return doc


def run(args, dist):
    start, load_before = time.time(), load_average()
    plan = plan_of(args)
    truth = nb201_truth.read_truth(args.ground_truth, plan.datasets)
    cells = study_cells(truth, plan.num_cells, args.sample_seed)
    save = Path(args.save)
    settings = {'seed': args.seed, 'channels': nb201_scores.CHANNELS, 'layers': nb201_scores.LAYERS}
    dist.init(torch.device('cpu'), backend='gloo')
    dist.from_main(lambda: prepare(save, settings))
    setup_logging(save / 'log.txt', dist.is_main)
    scored = score_mine(save, cells, read_done(save), dist, args)
    scored = int(dist.all_reduce_sum([scored], torch.device('cpu'))[0])
    doc = None
    if dist.is_main:
        lines = gather(save, cells)
        runs = record_run(save, start, load_before, scored, dist.world_size)
        doc = write_report(save, lines, truth, plan, args, runs)
        print((save / 'report.md').read_text())
    dist.barrier()
    return doc


@locks_released
def main(args):
    """The report's document on rank 0 (None on the others)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # the same arithmetic in every process, whatever their number
    dist = Dist()
    try:
        return run(args, dist)
    finally:
        dist.close()
        torch.set_num_threads(threads)


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: 'rerun the same command (scored cells are kept)')
