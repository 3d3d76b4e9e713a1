"""evolutionary_search/plots.py: the Pareto front by hand, what is costed, and which figures a search writes."""
import struct
from types import SimpleNamespace

import pytest

from evolutionary_search import plots
from evolutionary_search.plots import CostPoint, pareto_front


def png_size(path):
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR'
    return struct.unpack('>II', head[16:24])


def test_pareto_front_keeps_exactly_the_undominated_points():
    pts = [CostPoint(str(i), c, s) for i, (c, s) in enumerate(
        [(1, 1), (2, 3), (2, 2), (3, 2), (4, 5), (0.5, 0.5), (4, 5), (5, 4), (3, 3)])]
    # by hand: (0.5, .5) < (1, 1) < (2, 3) < (4, 5); (2, 2), (3, 2), (3, 3) lose to (2, 3), (5, 4) to (4, 5),
    # the second (4, 5) equals the first (not strictly better in either)
    assert [(p.cost, p.score) for p in pareto_front(pts)] == [(0.5, 0.5), (1, 1), (2, 3), (4, 5)]
    assert pareto_front([]) == []


def history(n):
    return [{'generation': g, 'best_score': 1.0 + g, 'mean_score': 0.5 + g, 'scored': 4 * g} for g in range(1, n + 1)]


def fake_evo(budget=None, scores=None):
    return SimpleNamespace(history=history(3), budget=budget, scores=scores or {})


def test_cost_is_what_the_budget_limits_multiply_adds_when_both():
    scores = {'1,2': {'score': 2.0, 'cost': {'macs': 30, 'params': 7}}, '3,4': {'score': 1.0}}
    both = SimpleNamespace(flops_limit=40, params_limit=9)
    assert plots.cost_points(scores, both) == ('macs', [CostPoint('1,2', 30.0, 2.0)])
    params_only = SimpleNamespace(flops_limit=None, params_limit=9)
    assert plots.cost_points(scores, params_only) == ('params', [CostPoint('1,2', 7.0, 2.0)])


def test_a_search_without_a_budget_writes_the_progress_plot_only(tmp_path):
    written = plots.write_search_plots(tmp_path, fake_evo(), 'wlm')
    assert written == [tmp_path / 'search_progress.png']
    width, height = png_size(written[0])
    assert (width, height) == (660, 396)                     # 6 x 3.6 inches at 110 dpi
    assert not list(tmp_path.glob('*.tmp'))


@pytest.mark.parametrize('limit', ['flops_limit', 'params_limit'])
def test_a_search_under_a_limit_also_plots_cost_against_score(tmp_path, limit):
    budget = SimpleNamespace(flops_limit=None, params_limit=None)
    setattr(budget, limit, 50)
    scores = {f'{i}': {'score': float(i % 5), 'cost': {'macs': 10 * i, 'params': 3 * i}} for i in range(1, 12)}
    written = plots.write_search_plots(tmp_path, fake_evo(budget, scores), 'angle')
    assert written == [tmp_path / 'search_progress.png', tmp_path / 'pareto.png']
    png_size(written[1])
