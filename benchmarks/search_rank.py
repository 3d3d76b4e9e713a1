"""One rank of evolutionary_search/search.py (the same flags, as torchrun starts it), that also writes how long
its search took from the first generation to the end (start-up, loading and building left out) and, on a GPU,
its peak of allocated memory. benchmarks/bench.py --search_ranks runs it under torchrun:

    BENCH_SEARCH_TIMES=DIR torchrun --nproc_per_node=2 benchmarks/search_rank.py --model_path ... --save ...

Each rank writes DIR/rank<RANK>.json: {"rank", "search_s", "max_memory_allocated_mb" (None on a CPU),
"peak_rss_mb"}. The search itself is unchanged: its run_search is wrapped by a timer.
"""
import json
import os
import resource
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evolutionary_search import runner  # noqa: E402


def timed(run_search, out_dir):
    """run_search, that writes this rank's record to out_dir when it returns."""
    def wrapper(*args, **kwargs):
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:          # the peak from here on (the resident supernet and data count: they are allocated)
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = run_search(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        record = {'rank': int(os.environ.get('RANK', 0)), 'search_s': time.perf_counter() - t0,
                  'max_memory_allocated_mb': torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        Path(out_dir, f'rank{record["rank"]}.json').write_text(json.dumps(record))
        return result
    return wrapper


if __name__ == '__main__':
    runner.run_search = timed(runner.run_search, os.environ['BENCH_SEARCH_TIMES'])
    script = str(ROOT / 'evolutionary_search' / 'search.py')
    sys.argv = [script, *sys.argv[1:]]
    runpy.run_path(script, run_name='__main__')
