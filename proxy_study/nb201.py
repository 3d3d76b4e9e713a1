"""The proxy study over NAS-Bench-201 in one command: cells scored by every metric on an NB201 supernet of
stage 1 (`--space nb201`), against the benchmark's own accuracies, reported per dataset.

    python3 proxy_study/nb201.py --model_path runs/nb201-c10/checkpoint_epoch_250.pth.tar \
        --init_model_path runs/nb201-c10/checkpoint_epoch_0.pth.tar --num_cells 1000 --save runs/nb201-study-c10
    python3 proxy_study/nb201.py ... --num_cells 15625                  # all cells
    python3 proxy_study/nb201.py ... --candidates cells.txt --arch '|nor_conv_3x3~0|+|...|'   # given cells
    python3 proxy_study/nb201.py ... --datasets cifar10,cifar100,imagenet16-120   # one supernet, three truths
    python3 proxy_study/nb201.py --bench_dir ./data/NATS-tss-v1_0-3ffb9-simple ...   # the benchmark's API

Two ground truths, each named in every report:
- `--ground_truth FILE` (the default, with the shipped spaces/nb201_data/nb201_val_accuracy.csv): a CSV of
  `arch` plus one accuracy column per dataset (spaces/nb201_truth.py); the shipped file holds the
  NAS-Bench-201 200-epoch validation accuracy of all 15,625 cells, via NASLib, one training run per cell;
- `--bench_dir`: the benchmark's test accuracy after its 200-epoch training, averaged over its seeds, on
  the dataset's test split (spaces/nb201_bench.py: cifar10 `ori-test`, cifar100 and ImageNet16-120
  `x-test`), read with the `nats_bench` API.
The datasets default to the supernet's own. Writes into --save: ground_truth_<dataset>.jsonl (one line per
cell), scores/scores.jsonl (one line per cell, metric and scoring seed, as proxy_study/scores.py),
report_<dataset>/ (report.md, report.json, figures, as proxy_study/report.py). Rerun the same command to
resume: scored cells are skipped, the ground-truth files and reports are rebuilt from the scores.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

from proxy_study.analysis import add_report_args, analyse, check_report_args, write_report  # noqa: E402
from proxy_study.cells import MIN_CELLS, add_cell_args, select_cells  # noqa: E402
from proxy_study.records import read_ground_truth, read_scores  # noqa: E402
from proxy_study.scoring import OUTPUT, SETTINGS, add_score_args, build_context, check_score_args, score_cells  # noqa: E402
from spaces import get_space, nb201_bench, nb201_truth  # noqa: E402
from devices import choose_device  # noqa: E402
from inputs import SEED_MAX, json_document, numbers, writable_dir  # noqa: E402
from seeding import seed_everything  # noqa: E402
from utils import (ArgumentParser, UserError, atomic_write_text, lock_run_dir, locks_released, logger, run_cli)  # noqa: E402

SEEDS_NOTE = "the mean over the benchmark's seeds (is_random=False)"


def get_args_parser():
    p = ArgumentParser(description='Proxy study over NAS-Bench-201: every metric on an NB201 supernet against the '
                                   'benchmark\'s accuracies, per dataset.')
    g = p.add_argument_group('ground truth (one of)')
    g.add_argument('--ground_truth', default=None,
                   help='CSV of arch plus one accuracy column (%%) per dataset; default (without --bench_dir): the '
                        f'shipped {nb201_truth.PROTOCOL} of all cells ({nb201_truth.SHIPPED.name})')
    g.add_argument('--bench_dir', default=None,
                   help=f'the unpacked {nb201_bench.FOLDER_NAME} folder of NATS-Bench (needs pip nats_bench): its '
                        '200-epoch test accuracy, mean over seeds')
    p.add_argument('--datasets', default=None,
                   help=f'comma-separated ground-truth datasets of the benchmark ({", ".join(nb201_bench.DATASETS)}); '
                        'None: the supernet\'s dataset')
    p.add_argument('--skip_missing', action='store_true',
                   help='leave out cells the ground truth holds no record of (default: stop with an error)')
    add_cell_args(p, notation='6 ints or an arch string', names='arch string or 6 ints')
    add_score_args(p)
    add_report_args(p)
    p.add_argument('--save', required=True, help='run directory (rerun the same command to resume)')
    p.set_defaults(standalone_channels=nb201_bench.CHANNELS, standalone_layers=nb201_bench.LAYERS)
    return p


def parse_args(argv=None):
    args = check_report_args(check_score_args(get_args_parser().parse_args(argv)))
    if args.bench_dir and args.ground_truth:
        raise UserError('--bench_dir and --ground_truth are two ground truths: pass one of them')
    numbers([('--seed', args.seed, dict(lo=0, hi=SEED_MAX)), ('--sample_seed', args.sample_seed, dict(lo=0))])
    return args


def bench_datasets(args, supernet_dataset):
    """The benchmark's names of the ground-truth datasets."""
    if args.datasets:
        return list(dict.fromkeys(nb201_bench.benchmark_dataset(d.strip()) for d in args.datasets.split(',')
                                  if d.strip()))
    if supernet_dataset not in nb201_bench.DATASETS:
        raise UserError(f'the supernet was trained on {supernet_dataset}, which NAS-Bench-201 holds no ground truth '
                        f'of; pass --datasets (one or more of {", ".join(nb201_bench.DATASETS)})')
    return [nb201_bench.benchmark_dataset(supernet_dataset)]


class BenchTruth:
    """The benchmark's test accuracies, mean over its seeds, read from a NATS-Bench folder."""

    def __init__(self, folder):
        self.bench = nb201_bench.Benchmark(folder)
        self.label = folder
        self.fix = f'pass the full {nb201_bench.FOLDER_NAME} folder'

    def has_record(self, candidate):
        return self.bench.has_record(candidate)

    def where(self, candidate):
        return f'benchmark index {self.bench.index.index(candidate)}, {get_space("nb201").to_string(candidate)}'

    def lines(self, cells, dataset, supernet_dataset, skipped):
        """ground_truth.jsonl of one dataset: one line per cell, the benchmark's mean over its seeds as seed 0
        (accuracy as a fraction, like proxy_study/ground_truth.py)."""
        protocol = {'benchmark': nb201_bench.FOLDER_NAME, 'dataset': dataset,
                    'split': nb201_bench.TEST_SPLIT[dataset], 'epochs': nb201_bench.EPOCHS, 'seeds': SEEDS_NOTE,
                    'supernet_dataset': supernet_dataset, 'cells_without_record_left_out': skipped}
        out = []
        for c in cells:
            r = self.bench.record(c.candidate, dataset)
            out.append(json.dumps({'candidate': r.candidate, 'seed': 0, 'test_acc': r.test_accuracy / 100,
                                   'test_loss': r.test_loss, 'params': r.params_m * 1e6, 'name': r.arch,
                                   'index': r.index, 'bench_seeds': r.seeds, 'protocol': protocol}) + '\n')
        return ''.join(out)

    def title(self, dataset):
        return (f'# NAS-Bench-201 proxy study, {dataset} ({nb201_bench.TEST_SPLIT[dataset]}): rank agreement of '
                'search metrics with the benchmark')

    def source(self, dataset, supernet_dataset):
        return (f'ground truth: the benchmark\'s test accuracy on {dataset}, split `{nb201_bench.TEST_SPLIT[dataset]}`, '
                f'after its {nb201_bench.EPOCHS}-epoch training, {SEEDS_NOTE}, one value per cell; scores of a '
                f'supernet trained on {supernet_dataset}, averaged over the scoring seeds')


class CsvTruth:
    """Accuracies per cell from a CSV file (spaces/nb201_truth.py), by default the shipped validation accuracies."""

    def __init__(self, path, datasets):
        self.truth = nb201_truth.read_truth(path, datasets)
        self.label = self.truth.path
        self.fix = f'pass a ground-truth file that holds them (the shipped {nb201_truth.SHIPPED.name} holds all)'

    def has_record(self, candidate):
        return self.truth.has(candidate)

    def where(self, candidate):
        return get_space('nb201').to_string(candidate)

    def lines(self, cells, dataset, supernet_dataset, skipped):
        """ground_truth.jsonl of one dataset: one line per cell, its one value as seed 0 (a fraction)."""
        protocol = {**self.truth.protocol(), 'dataset': dataset, 'ground_truth_file': self.truth.path,
                    'supernet_dataset': supernet_dataset, 'cells_without_record_left_out': skipped}
        name = nb201_truth.study_dataset(dataset)
        return ''.join(json.dumps({'candidate': list(c.candidate), 'seed': 0,
                                   'test_acc': self.truth.value(c.candidate, name) / 100,
                                   'name': get_space('nb201').to_string(c.candidate),
                                   'line': self.truth.lines[self.truth.row(c.candidate)], 'protocol': protocol}) + '\n'
                       for c in cells)

    def title(self, dataset):
        return (f'# NAS-Bench-201 proxy study, {dataset} (validation accuracy): rank agreement of search metrics '
                'with the benchmark')

    def source(self, dataset, supernet_dataset):
        seeds = self.truth.protocol()['seeds']
        return (f'ground truth: {self.truth.protocol()["what"]} on {dataset} (`{self.truth.path}`), {seeds}; '
                f'scores of a supernet trained on {supernet_dataset}, averaged over the scoring seeds')


def open_truth(args, datasets):
    if args.bench_dir:
        return BenchTruth(args.bench_dir)
    return CsvTruth(args.ground_truth or nb201_truth.SHIPPED, datasets)


def cells_with_records(truth, cells, args):
    """The cells the ground truth holds records of; the others are an error unless --skip_missing."""
    missing = [c for c in cells if not truth.has_record(c.candidate)]
    if missing and not args.skip_missing:
        raise UserError(f'{truth.label} holds no record of {len(missing)} of the {len(cells)} cells (e.g. '
                        f'{truth.where(missing[0].candidate)}); {truth.fix}, or --skip_missing to leave them out')
    kept = [c for c in cells if c not in missing]
    if len(kept) < MIN_CELLS:
        raise UserError(f'{truth.label} holds records of {len(kept)} of the {len(cells)} cells; a rank '
                        f'correlation needs {MIN_CELLS}: choose cells it holds, or {truth.fix}')
    return kept, len(missing)


def report(save, dataset, args, truth, supernet_dataset):
    """report_<dataset>/ from the ground-truth file and the scores; returns report.json's document."""
    scores_path = save / 'scores' / OUTPUT
    rargs = argparse.Namespace(**vars(args))
    rargs.ground_truth, rargs.scores = save / f'ground_truth_{dataset}.jsonl', scores_path
    gt, scores = read_ground_truth(rargs.ground_truth), read_scores(scores_path)
    ceiling, results = analyse(gt, scores, rargs)
    settings = json_document('--save', save / 'scores' / SETTINGS, {}, 'the settings.json of a scores run')
    return write_report(gt, scores, ceiling, results, rargs, save / f'report_{dataset}', settings,
                        truth.title(dataset), truth.source(dataset, supernet_dataset))


@locks_released
def main(args):
    writable_dir('--save', args.save)
    device = choose_device(args.device)
    seed_everything(args.seed)
    setup = build_context(args, device, [], args.model_path,
                          {'init_channels': args.standalone_channels, 'layers': args.standalone_layers})
    if setup.ctx.space.name != 'nb201':
        raise UserError(f'{args.model_path} holds a {setup.ctx.space.name} supernet; the NAS-Bench-201 study needs '
                        'one trained by stage 1 with --space nb201')
    datasets = bench_datasets(args, setup.dataset)
    cells = select_cells(args.num_cells, args.sample_seed, args.candidates, args.arch, setup.ctx.space)
    truth = open_truth(args, datasets)
    cells, skipped = cells_with_records(truth, cells, args)
    texts = {d: truth.lines(cells, d, setup.dataset, skipped) for d in datasets}
    save = Path(args.save)
    lock_run_dir(save, 'nb201-study')                    # every user error above: nothing written
    for d, text in texts.items():
        atomic_write_text(save / f'ground_truth_{d}.jsonl', text)
    names = {c.candidate: f'{c.name}: {setup.ctx.space.to_string(c.candidate)}' for c in cells}
    score_cells(setup.ctx, [c.candidate for c in cells], names, args, save / 'scores')
    if skipped:
        logger.info('%d cells without a record in %s left out (--skip_missing)', skipped, truth.label)
    docs = {}
    for d in datasets:
        docs[d] = report(save, d, args, truth, setup.dataset)
        print((save / f'report_{d}' / 'report.md').read_text())
    return docs


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: 'rerun the same command (scored cells are kept)')
