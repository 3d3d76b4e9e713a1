"""Report of the proxy study: how well each metric ranks the cells like the ground truth does.

    python3 proxy_study/report.py --ground_truth runs/study/gt/ground_truth.jsonl \
        --scores runs/study/scores/scores.jsonl --out runs/study/report

For every metric (its score averaged over the scoring seeds) against the mean test accuracy over the
training seeds: Kendall tau-b, Spearman rho and precision@top-10%, each with a 95% percentile bootstrap
interval over cells (the same seeded resamples for every metric); the ground-truth ceiling (mean tau
between training seeds) and each metric's repeatability (mean tau between scoring seeds). Writes
report.md (sorted by tau), report.json, scatter_<metric>.png and taus.png into --out. The logic is
proxy_study/analysis.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

from proxy_study.analysis import add_report_args, analyse, check_cells, check_report_args, write_report  # noqa: E402
from proxy_study.records import read_ground_truth, read_scores  # noqa: E402
from inputs import json_document, writable_dir  # noqa: E402
from utils import ArgumentParser, UserError, lock_run_dir, locks_released, run_cli, write_guard  # noqa: E402

KIND = 'proxy-report'


def get_args_parser():
    p = ArgumentParser(description='Proxy study, report: rank agreement of every metric with the ground truth.')
    p.add_argument('--ground_truth', required=True, help='ground_truth.jsonl (proxy_study/ground_truth.py or by hand)')
    p.add_argument('--scores', required=True, help='scores.jsonl of proxy_study/scores.py')
    p.add_argument('--save', '--out', dest='out', metavar='DIR', required=True,
                   help='folder for report.md, report.json and the PNGs')
    add_report_args(p)
    p.add_argument('--force', action='store_true', help='replace a report already in --out')
    return p


def parse_args(argv=None):
    return check_report_args(get_args_parser().parse_args(argv))


@locks_released
def main(args):
    writable_dir('--out', args.out)
    gt = read_ground_truth(args.ground_truth)
    check_cells(gt, args)
    scores = read_scores(args.scores)
    ceiling, results = analyse(gt, scores, args)            # every error before anything is written
    out = Path(args.out)
    if (out / 'report.md').exists() and not args.force:
        raise UserError(f'{out} already holds a report; pass --force to replace it, or choose another --out')
    settings_path = Path(args.scores).with_name('settings.json')
    settings = json_document('the settings beside --scores', settings_path, {}, 'the settings.json of scores.py') \
        if settings_path.exists() else None
    lock_run_dir(out, KIND)
    with write_guard(out):                      # the figures are written straight, not through atomic writes
        doc = write_report(gt, scores, ceiling, results, args, out, settings)
    print((out / 'report.md').read_text())
    return doc


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: 'rerun the same command with --force')
