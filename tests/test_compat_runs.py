"""Run directories written before the re-layout (tests/fixtures/pre_relayout: interrupted runs of stages 1, 2
and 3 and of the proxy study's scores, made by the code of commit 99dbb68) resume with today's CLIs to the old
code's uninterrupted results, bit for bit on the CPU, and the resumed runs evaluate to the old numbers.
fixtures/pre_relayout/README.md says how the folder was made; expected.json holds the old results' digests."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_script

FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'pre_relayout'
COMMANDS = json.loads((FIXTURE / 'commands.json').read_text())
EXPECTED = json.loads((FIXTURE / 'expected.json').read_text())
ONE_THREAD = {'OMP_NUM_THREADS': '1'}       # the thread count the old results were made with
# The CPU kernels the old results were made with (torch.backends.cpu.get_cpu_capability()): torch's and oneDNN's
# AVX2 kernels round some sums differently, so on a CPU without AVX-512 the old code itself resumes to other bits.
KERNELS = 'AVX512'
# What runs on a resumed run directory afterwards (as in make_fixture.py): the stage-3 checkpoint validated by
# retrain.py --evaluate, the stage-1 supernet scoring a named cell with search.py --arch.
EVALUATION = {'retrain_run': 'evaluate', 'supernet_run': 'arch_scores'}
# The file a run appends its progress to: the fixture's copy stays its beginning when the run continues (a
# run that started over would rewrite it: stages 1 and 3 with another epoch_time).
PROGRESS = {'supernet_run': 'metrics.jsonl', 'search_run': 'metrics.jsonl', 'retrain_run': 'metrics.jsonl',
            'scores_run': 'scores.jsonl'}


def _load_digest():
    spec = importlib.util.spec_from_file_location('pre_relayout_digest', FIXTURE / 'digest.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


digest = _load_digest()


def unfinished(name, cwd):
    """True when the copied run directory `name` is short of its final result (the fixture is interrupted)."""
    try:
        return digest.part(name, cwd) != EXPECTED[name]
    except (OSError, KeyError):             # a final file (genotype.json, checkpoint_epoch_2) not written yet
        return True


@pytest.mark.slow
@pytest.mark.parametrize('name', ['supernet_run', 'search_run', 'retrain_run', 'scores_run'])
def test_pre_relayout_run_resumes_to_the_old_result(name, tmp_path):
    """The old run's own resume command, with its cwd a copy of the fixture (the runs record relative paths)."""
    import torch
    if torch.backends.cpu.get_cpu_capability() != KERNELS:
        pytest.skip(f'the old results were made with torch\'s {KERNELS} CPU kernels; this CPU runs '
                    f'{torch.backends.cpu.get_cpu_capability()}, whose results differ in the last bits')
    cwd = tmp_path / 'pre_relayout'
    shutil.copytree(FIXTURE, cwd, ignore=shutil.ignore_patterns('__pycache__', 'expected.json'))
    assert unfinished(name, cwd)
    step = COMMANDS[name]
    proc = run_script(step['script'], *step['resume'], cwd=cwd, env_extra=ONE_THREAD)
    old_progress = (FIXTURE / name / PROGRESS[name]).read_text()
    assert (cwd / name / PROGRESS[name]).read_text().startswith(old_progress), 'the run started over'
    if name == 'search_run':        # its metrics.jsonl has no clock: the log says which generations ran now
        assert re.search(r'\bgeneration 2\b', proc.stderr) and not re.search(r'\bgeneration 1\b', proc.stderr)
    differ = digest.differences(EXPECTED[name], digest.part(name, cwd))
    assert not differ, '\n'.join(differ[:20])
    if name in EVALUATION:
        then = EVALUATION[name]
        proc = run_script(COMMANDS[then]['script'], *COMMANDS[then]['argv'], cwd=cwd, env_extra=ONE_THREAD)
        (cwd / f'{then}.out').write_text(proc.stdout)
        differ = digest.differences(EXPECTED[then], digest.part(then, cwd))
        assert not differ, '\n'.join(differ[:20])
