import json

import genotypes as G
from evolutionary_search.evolution import Evolution, cand_key, key_cand

TARGET = G.encode(G.GENAS_FLATNESS_CIFAR100)


def fake_score(cand):
    """Cheap deterministic score: how many edges agree with a target cell."""
    return {'score': float(sum(a == b for a, b in zip(cand, TARGET)))}


def run(evo, stop_after=None):
    evo.start()
    scored = 0
    while not evo.done:
        for cand in evo.pending():
            evo.record(cand, fake_score(cand))
            scored += 1
            if stop_after is not None and scored == stop_after:
                return False
        evo.finish_generation()
    return True


def small(seed=0, **kw):
    cfg = dict(max_epochs=6, population_num=12, select_num=4, mutation_num=5, crossover_num=5, m_prob=0.1, seed=seed)
    cfg.update(kw)
    return Evolution(**cfg)


def test_candidates_valid_unique_and_elitist():
    evo = small()
    evo.start()
    best_so_far = []
    proposed = []
    while not evo.done:
        proposed += evo.population
        for cand in evo.pending():
            assert G.is_valid(cand)
            evo.record(cand, fake_score(cand))
        summary = evo.finish_generation()
        best_so_far.append(summary['best_score'])
    assert len(proposed) == len(set(proposed)) == 6 * 12 == len(evo.scores)
    assert best_so_far == sorted(best_so_far)                       # elitist: never gets worse
    assert best_so_far[-1] > best_so_far[0]                          # and the search makes progress
    scores = [i['score'] for _, i in evo.best(50)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 50


def test_mutation_changes_reduction_edges():
    """The reference mutates only the 14 normal edges. A mutant whose reduction half equals no parent's reduction
    half must have had reduction edges mutated (repair leaves a valid half unchanged); with mutation of the
    normal half only, every mutant keeps its parent's reduction half and this fails."""
    evo = small(mutation_num=10, crossover_num=0, m_prob=0.2)
    evo.start()
    for cand in evo.pending():
        evo.record(cand, fake_score(cand))
    evo.finish_generation()
    parents = [key_cand(k) for k in evo.top_k]
    mutants = [key_cand(k) for k in evo.population[:10]]
    new_reduce = [m for m in mutants if all(m[14:] != p[14:] for p in parents)]
    new_normal = [m for m in mutants if all(m[:14] != p[:14] for p in parents)]
    assert new_reduce and new_normal


def test_same_seed_same_result_and_other_seed_differs():
    a, b, c = small(seed=1), small(seed=1), small(seed=2)
    for e in (a, b, c):
        run(e)
    assert a.top_keep == b.top_keep and a.scores == b.scores
    assert a.top_keep != c.top_keep


def test_resume_from_json_state_mid_generation():
    straight = small(seed=4)
    run(straight)
    first = small(seed=4)
    assert run(first, stop_after=17) is False                       # "killed" in generation 2
    resumed = small(seed=4)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    run(resumed)
    assert resumed.top_keep == straight.top_keep and resumed.scores == straight.scores
    assert resumed.history == straight.history


def test_raising_max_epochs_continues_a_finished_search():
    short, long = small(seed=5, max_epochs=3), small(seed=5, max_epochs=5)
    run(short)
    run(long)
    extended = small(seed=5, max_epochs=5)
    extended.load_state_dict(json.loads(json.dumps(short.state_dict())))
    run(extended)
    assert extended.top_keep == long.top_keep


def test_cand_key_roundtrip():
    assert cand_key(TARGET) == ','.join(map(str, TARGET))
    for cand in (TARGET, tuple(reversed(TARGET)), [0] * 28, [7] * 28, [4, 0, 3, 1, 2, 4]):   # DARTS and NB201
        assert key_cand(cand_key(cand)) == list(cand)


def test_a_search_logs_a_line_at_least_every_30_seconds_without_a_progress_bar():
    """runner.Progress with a fake clock: a line at the first update 30 s or more after the last one, else none.
    The lines are caught by a handler on the project's logger itself (caplog's handler sits on the root logger,
    and pytest 9.2 adds one on the named logger too, which counts each line twice when it propagates)."""
    import logging
    from evolutionary_search import runner
    now = [0.0]
    lines = []

    class Catch(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    class Bar:
        def update(self, n):
            pass

        def set_postfix(self, **kw):
            pass
    evo = Evolution(1, 4, 2, 1, 1, 0.1, seed=0)
    evo.start()
    shown = runner.Progress(Bar(), clock=lambda: now[0])
    logger, catch = logging.getLogger('genas'), Catch(logging.INFO)
    level = logger.level
    logger.addHandler(catch)
    logger.setLevel(logging.INFO)
    try:
        for t in (10.0, 29.9, 30.0, 45.0, 59.9, 60.1):
            now[0] = t
            shown.update(evo)
    finally:
        logger.removeHandler(catch)
        logger.setLevel(level)
    assert lines == ['generation 1: 0 candidates scored'] * 2
