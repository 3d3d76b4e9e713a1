"""heap.py: glibc's heap between training steps (keeping freed memory, trimming it on purpose)."""
import subprocess
import sys

import pytest
import torch

import heap
from conftest import ROOT

# A child process frees 40 heap blocks of one size (below glibc's 32 MB mapping threshold, so they come from the
# heap), allocates and writes them again, and prints the page faults of that second round; for three sizes.
REFAULT = """
import resource, sys
import torch
import heap
if sys.argv[1] == 'keep':
    assert heap.keep_freed_memory()
faults = 0
for n in (700_000, 2_000_000, 5_000_000):          # floats: 2.8, 8 and 20 MB
    for _ in range(3):
        blocks = [torch.ones(n) for _ in range(40)]
        del blocks
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(n) for _ in range(40)]
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del blocks
print(faults)
"""


def _refaults(mode):
    out = subprocess.run([sys.executable, '-c', REFAULT, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_kept_memory_is_not_faulted_in_again():
    """With keep_freed_memory() blocks freed and allocated again come from the kept heap: a few thousand page
    faults at most, against the 27,000 to 300,000 of glibc's default on an AVX2 EPYC (where its adaptive
    thresholds land varies between runs, and rarely it keeps the memory by itself)."""
    if heap._libc() is None or heap.resident_bytes() is None:
        pytest.skip('needs glibc and /proc')
    assert _refaults('keep') < 5_000


def test_heap_trimmer_trims_only_above_the_headroom(monkeypatch):
    trims = []
    trim = heap.HeapTrimmer(torch.device('cpu'), 0.2)
    always = heap.HeapTrimmer(torch.device('cpu'), 0.0)
    for t, headroom in ((trim, 0.2), (always, 0.0)):
        t.headroom = headroom     # the constructor disables it where glibc or /proc is missing
        t._trim = lambda pad: trims.append(pad)
    rss = iter([1000, 1100, 1250, 1150, 1300])          # RSS after steps 1..5; limit 1.2 x 1000
    monkeypatch.setattr(heap, 'resident_bytes', lambda: next(rss))
    for _ in range(5):
        trim()
    assert trim.limit == pytest.approx(1200) and trim.trims == len(trims) == 2       # at 1250 and 1300

    monkeypatch.setattr(heap, 'resident_bytes', lambda: 1000)
    for _ in range(3):
        always()
    assert always.trims == 3 and len(trims) == 5
    assert heap.HeapTrimmer(torch.device('meta'), 0.2).headroom < 0      # only CPUs: off elsewhere
    assert heap.HeapTrimmer(torch.device('cpu'), -1).headroom < 0


def test_resident_bytes_is_the_process_rss():
    if heap.resident_bytes() is None:
        pytest.skip('no /proc/self/statm on this system')
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 50 * 2**20 < heap.resident_bytes() <= peak + 2**20
