"""The proxy study's analysis: how well each metric ranks the cells like the ground truth does, written as
report.md, report.json and figures. The logic behind proxy_study/report.py and proxy_study/nb201.py.

For every metric (its score averaged over the scoring seeds) against the mean test accuracy over the
training seeds: Kendall tau-b, Spearman rho and precision@top-10%, each with a 95% percentile bootstrap
interval over cells (the same seeded resamples for every metric); the ground-truth ceiling (mean tau
between training seeds) and each metric's repeatability (mean tau between scoring seeds).
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proxy_study import stats
from proxy_study.cells import MIN_CELLS
from utils import UserError, atomic_write_text, require


def add_report_args(p):
    """The analysis flags shared by report.py and nb201.py."""
    p.add_argument('--resamples', type=int, default=2000, help='bootstrap resamples (>= 1000)')
    p.add_argument('--bootstrap_seed', type=int, default=0, help='seed of the bootstrap resamples')
    p.add_argument('--top_fraction', type=float, default=0.1, help='precision@top: the best fraction of cells')
    return p


def check_report_args(args):
    require([(args.resamples >= 1000, '--resamples must be >= 1000 for a 95% interval'),
             (0 < args.top_fraction <= 1, '--top_fraction must lie in (0, 1]')])
    return args


@dataclass
class MetricResult:
    metric: str
    cells: int
    seeds: list
    tau: stats.Estimate
    rho: stats.Estimate
    precision: stats.Estimate
    repeatability: stats.Estimate     # None when scored with one seed (deterministic metrics)

    def as_dict(self):
        rep = self.repeatability.as_dict() if self.repeatability else None
        return {'metric': self.metric, 'cells': self.cells, 'scoring_seeds': self.seeds, 'tau': self.tau.as_dict(),
                'rho': self.rho.as_dict(), 'precision_at_top': self.precision.as_dict(), 'repeatability': rep}


def analyse_metric(metric, per_cell, gt, args):
    """MetricResult over the ground-truth cells this metric scored (every seed they all share)."""
    rows = [i for i, c in enumerate(gt.cells) if c in per_cell]
    if len(rows) < MIN_CELLS:
        raise UserError(f'metric {metric} scored {len(rows)} of the ground truth\'s cells; a rank correlation needs '
                        f'{MIN_CELLS}: finish proxy_study/scores.py on the same ground-truth file')
    seeds = sorted(set.intersection(*(set(per_cell[gt.cells[i]]) for i in rows)))
    table = np.array([[per_cell[gt.cells[i]][s] for s in seeds] for i in rows], float)     # (cells, seeds)
    score, truth = table.mean(axis=1), gt.mean[rows]
    kw = dict(n=len(rows), resamples=args.resamples, seed=args.bootstrap_seed)

    def precision(a, b):
        return stats.precision_at_top(a, b, args.top_fraction)
    repeat = stats.estimate(stats.rows(stats.mean_pairwise_tau, table), **kw) if len(seeds) > 1 else None
    return MetricResult(metric, len(rows), seeds, stats.estimate(stats.paired(stats.kendall_tau, score, truth), **kw),
                        stats.estimate(stats.paired(stats.spearman_rho, score, truth), **kw),
                        stats.estimate(stats.paired(precision, score, truth), **kw), repeat)


def check_cells(gt, args):
    if len(gt.cells) < MIN_CELLS:
        raise UserError(f'{args.ground_truth} holds {len(gt.cells)} cell(s); a rank correlation needs at least '
                        f'{MIN_CELLS}: add cells')


def analyse(gt, scores, args):
    """(ceiling Estimate or None, [MetricResult] sorted by tau, best first; NaN last)."""
    check_cells(gt, args)
    if not scores:
        raise UserError(f'{args.scores} holds no scores; run proxy_study/scores.py first')
    ceiling = None
    if len(gt.seeds) > 1:
        ceiling = stats.estimate(stats.rows(stats.mean_pairwise_tau, gt.acc), len(gt.cells), args.resamples,
                                 args.bootstrap_seed)
    results = [analyse_metric(m, per_cell, gt, args) for m, per_cell in scores.items()]
    results.sort(key=lambda r: -r.tau.value if not math.isnan(r.tau.value) else math.inf)
    return ceiling, results


# --- output ---------------------------------------------------------------------------------------------

def fmt(e, digits=2):
    if e is None:
        return 'n/a (deterministic)'
    if math.isnan(e.value):
        return 'undefined'
    return f'{e.value:+.{digits}f} [{e.lo:+.{digits}f}, {e.hi:+.{digits}f}]'


def file_stem(metric):
    return 'scatter_' + metric.replace('+', '_plus_')


def markdown(gt, ceiling, results, args, settings, title=None, source=None):
    """The report; `title` and `source` (what one ground-truth value is) replace the defaults, which
    describe a ground truth trained by proxy_study/ground_truth.py."""
    pct = f'{100 * args.top_fraction:g}%'
    k = stats.top_k(len(gt.cells), args.top_fraction)
    source = source or (f'{len(gt.seeds)} training seed(s) each ({gt.seeds}); scores averaged over the scoring '
                        'seeds, ground truth over the training seeds')
    lines = [title or '# Proxy study: rank agreement of search metrics with trained-from-scratch accuracy', '',
             f'{len(gt.cells)} cells, {source}. 95% percentile bootstrap intervals over '
             f'cells ({args.resamples} resamples, seed {args.bootstrap_seed}, the same resamples for every row). '
             f'Precision@top-{pct}: share of the {k} best cells by test accuracy that are among the {k} best '
             'by the metric (ties broken at random, in expectation).', '',
             f'**Ground-truth ceiling** (Kendall tau between training seeds): '
             f'{fmt(ceiling) if ceiling else "n/a (one value per cell)"}. A metric cannot be '
             'expected to agree with the mean ground truth much better than the seeds agree with each other.',
             '', f'| metric | cells | Kendall tau | Spearman rho | precision@top-{pct} | repeatability (tau between '
             'scoring seeds) |', '|---|---|---|---|---|---|']
    for r in results:
        lines.append(f'| `{r.metric}` | {r.cells} | {fmt(r.tau)} | {fmt(r.rho)} | {fmt(r.precision)} | '
                     f'{fmt(r.repeatability)} |')
    acc = gt.acc
    lines += ['', '## Ground truth', '',
              f'Mean test accuracy over cells {acc.mean():.4f} (range of cell means {gt.mean.min():.4f} .. '
              f'{gt.mean.max():.4f}, std {gt.mean.std():.4f})'
              + (f'; mean std between the seeds of a cell {acc.std(axis=1).mean():.4f}.' if acc.shape[1] > 1 else '.'),
              '',
              '## Protocol', '', f'Ground truth: `{args.ground_truth}`', '']
    lines += [f'- {k}: {v}' for k, v in (gt.protocol or {'(not recorded)': ''}).items()]
    lines += ['', f'Scores: `{args.scores}`', '']
    lines += [f'- {k}: {v}' for k, v in (settings or {'(settings.json not found beside it)': ''}).items()]
    lines += ['', '## Figures', '', '![all taus](taus.png)', '']
    lines += [f'![{r.metric}]({file_stem(r.metric)}.png)' for r in results]
    return '\n'.join(lines) + '\n'


def plot_scatter(path, metric, result, score, truth):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.scatter(score, truth, s=14)
    if np.all(score > 0) and score.max() / score.min() > 1e3:
        ax.set_xscale('log')
    ax.set_xlabel(f'{metric} (mean over scoring seeds)')
    ax.set_ylabel('test accuracy (mean over seeds)')
    ax.set_title(f'{metric}: tau {fmt(result.tau)}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_taus(path, ceiling, results):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    shown = [r for r in results if not math.isnan(r.tau.value)][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(shown) + 1.4))
    y = np.arange(len(shown))
    values = np.array([r.tau.value for r in shown])
    err = np.array([[r.tau.value - r.tau.lo for r in shown], [r.tau.hi - r.tau.value for r in shown]])
    ax.errorbar(values, y, xerr=np.nan_to_num(err), fmt='o', capsize=3)
    ax.axvline(0, color='grey', lw=0.8)
    if ceiling is not None and not math.isnan(ceiling.value):
        ax.axvspan(ceiling.lo, ceiling.hi, color='orange', alpha=0.2, label='ground-truth ceiling (95% CI)')
        ax.axvline(ceiling.value, color='orange', lw=1)
        ax.legend(fontsize=8, loc='lower right')
    ax.set_yticks(y, [r.metric for r in shown])
    ax.set_xlabel('Kendall tau with the ground truth (95% bootstrap CI)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(gt, scores, ceiling, results, args, out, settings=None, title=None, source=None):
    """Write report.json, report.md and the figures of analyse()'s (ceiling, results) into `out`; returns the
    JSON document. `args`: as analyse()'s, and the paths ground_truth and scores (for the record); `title`
    and `source`: see markdown()."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        rows = [i for i, c in enumerate(gt.cells) if c in scores[r.metric]]
        score = np.array([np.mean([scores[r.metric][gt.cells[i]][s] for s in r.seeds]) for i in rows])
        plot_scatter(out / f'{file_stem(r.metric)}.png', r.metric, r, score, gt.mean[rows])
    plot_taus(out / 'taus.png', ceiling, results)
    doc = {'cells': len(gt.cells), 'ground_truth_seeds': gt.seeds, 'ground_truth': str(args.ground_truth),
           'scores': str(args.scores), 'ceiling': ceiling.as_dict() if ceiling else None,
           'bootstrap': {'resamples': args.resamples, 'seed': args.bootstrap_seed, 'level': 0.95},
           'top_fraction': args.top_fraction, 'protocol': gt.protocol, 'scoring_settings': settings,
           'ground_truth_mean_acc': gt.mean.tolist(), 'metrics': [r.as_dict() for r in results]}
    atomic_write_text(out / 'report.json', json.dumps(doc, indent=2, default=str))
    atomic_write_text(out / 'report.md', markdown(gt, ceiling, results, args, settings, title, source))
    return doc
