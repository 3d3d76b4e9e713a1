"""The figures a search writes at its end: search_progress.png (the best and the mean score of every generation,
and how many candidates had been scored) and, for a search under --flops_limit / --params_limit, pareto.png (the
cost of every scored candidate against its score, with the Pareto front: the candidates that no other beats in
both a lower cost and a higher score)."""
import math
import os
from dataclasses import dataclass
from pathlib import Path

from utils import write_guard

PROGRESS_FILE, PARETO_FILE = 'search_progress.png', 'pareto.png'


@dataclass(frozen=True)
class CostPoint:
    key: str            # the candidate, as the search checkpoint keys it
    cost: float         # multiply-adds or parameters of its budget network
    score: float


def pareto_front(points):
    """The points no other point dominates (cost <= and score >= with one of them strict), by increasing cost."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p.cost, -p.score)):
        if p.score > best:
            front.append(p)
            best = p.score
    return front


def cost_points(scores, budget):
    """CostPoints of the scored candidates, costed by what the budget limits (multiply-adds when both are)."""
    kind = 'macs' if budget.flops_limit is not None else 'params'
    return kind, [CostPoint(k, float(info['cost'][kind]), info['score']) for k, info in scores.items()
                  if 'cost' in info]


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """Write the figure to a temporary name, then move it into place (a reader never sees half a PNG)."""
    tmp = path.with_name(path.name + '.tmp')
    with write_guard(path, tmp):
        fig.savefig(tmp, dpi=110, format='png')
        os.replace(tmp, path)
    _pyplot().close(fig)
    return path


def plot_progress(path, history, metric):
    """search_progress.png from the generation summaries (Evolution.history)."""
    plt = _pyplot()
    gens = [h['generation'] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(gens, [h['best_score'] for h in history], 'o-', color='tab:blue', label='best so far')
    ax.plot(gens, [h['mean_score'] for h in history], 's--', color='tab:orange', label='population mean')
    ax.set_xlabel('generation')
    ax.set_ylabel(f'{metric} score')
    ax.set_xticks(gens)
    right = ax.twinx()
    right.bar(gens, [h['scored'] for h in history], color='gray', alpha=0.25, label='candidates scored')
    right.set_ylabel('candidates scored (cumulative)')
    ax.set_zorder(right.get_zorder() + 1)
    ax.patch.set_visible(False)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.set_title(f'search ({metric}): {history[-1]["scored"]} candidates in {len(history)} generations', fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles=handles, loc='lower center', ncol=3, fontsize=8, frameon=False)
    return _save(fig, Path(path))


def plot_pareto(path, kind, points, metric, limit):
    """pareto.png: cost against score of every scored candidate, the front drawn as a step line."""
    plt = _pyplot()
    front = pareto_front(points)
    scale, unit = (1e6, 'M multiply-adds') if kind == 'macs' else (1e6, 'M parameters')
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter([p.cost / scale for p in points], [p.score for p in points], s=14, color='gray', alpha=0.6,
               label=f'scored ({len(points)})')
    ax.step([p.cost / scale for p in front], [p.score for p in front], 'o-', where='post', color='tab:red',
            label=f'Pareto front ({len(front)})')
    if limit is not None:
        ax.axvline(limit / scale, color='black', linestyle=':', label='limit')
    ax.set_xlabel(unit)
    ax.set_ylabel(f'{metric} score')
    ax.legend(fontsize=8)
    ax.set_title('cost against score', fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def write_search_plots(out, evo, metric):
    """The search's figures into its run directory; returns the paths written."""
    out = Path(out)
    written = [plot_progress(out / PROGRESS_FILE, evo.history, metric)] if evo.history else []
    if evo.budget is not None:
        kind, points = cost_points(evo.scores, evo.budget)
        if points:
            limit = evo.budget.flops_limit if kind == 'macs' else evo.budget.params_limit
            written.append(plot_pareto(out / PARETO_FILE, kind, points, metric, limit))
    return written
