"""The whole GeNAS pipeline on Fashion-MNIST, offline on a CPU, with a report that explains its result.

    bash demo.sh                 # sets up what is missing, then runs this (under 10 minutes on 2 cores)
    python3 demo.py --seed 1     # the same with another seed (every stage and the baseline cell follow it)
    python3 demo.py --tiny       # seconds; what CI runs
    python3 demo.py --force      # redo every stage

Stages (each its own CLI, each with a progress bar): 1. a small SPOS supernet, trained until a random path is
well above chance; 2. a flatness (wlm) search and an angle+wlm search over the same supernet, each writing
search_progress.png; 3. retraining of the best wlm cell and, with the same settings, of a uniformly random
baseline cell. A finished stage is skipped when the demo runs again, an interrupted one resumes.
The report (<out>/report.md, also printed) says what dominates each search's score, how far the two searches
agree, warns when the supernet has barely learned, and shows the cells as genotypes and drawings.
"""
import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import genotypes  # noqa: E402
from counting import count_macs, count_parameters  # noqa: E402
from data import load_arrays  # noqa: E402
from devices import Machine  # noqa: E402
from inputs import SEED_MAX, json_document  # noqa: E402
from spaces import get_space  # noqa: E402
from utils import ArgumentParser, UserError, atomic_write_text, lock_run_dir, locks_released, read_metrics, run_cli  # noqa: E402,E501

SCALES = {
    # The supernet gets most of the time: a uniformly sampled supernet learns slowly, and a search over one that
    # has not learned ranks noise. The searches and the retraining are kept short.
    'full': {
        'supernet': ['--init_channels', 8, '--layers', 5, '--epochs', 2, '--train_subset', 20000,
                     '--valid_subset', 1000, '--learning_rate', 0.05, '--no-augment', '--valid_paths', 5],
        'search': ['--max_epochs', 3, '--population_num', 8, '--select_num', 4, '--mutation_num', 3,
                   '--crossover_num', 3, '--max_train_img_size', 256, '--max_val_img_size', 256],
        'retrain': ['--init_channels', 12, '--layers', 3, '--epochs', 2, '--batch_size', 64, '--learning_rate', 0.05,
                    '--train_subset', 6000, '--no-auxiliary', '--drop_path_prob', 0, '--cutout_length', 0],
    },
    'tiny': {
        'supernet': ['--init_channels', 4, '--layers', 3, '--epochs', 1, '--train_subset', 512,
                     '--valid_subset', 256, '--valid_bn_images', 128, '--no-augment', '--valid_paths', 2],
        'search': ['--max_epochs', 2, '--population_num', 4, '--select_num', 2, '--mutation_num', 1,
                   '--crossover_num', 1, '--max_train_img_size', 64, '--max_val_img_size', 128],
        'retrain': ['--init_channels', 8, '--layers', 3, '--epochs', 1, '--batch_size', 64, '--learning_rate', 0.05,
                    '--train_subset', 1024, '--test_subset', 500, '--no-auxiliary', '--drop_path_prob', 0,
                    '--cutout_length', 0],
    },
}
WLM_WEIGHT = 16                 # the angle+wlm search's weight (the proxy study's published value)


KINDS = ('supernet', 'search', 'retrain')


@dataclass(frozen=True)
class Stage:
    """One stage of the demo: a CLI run into its own run directory."""
    name: str                   # shown on the console and in the report's wall-time table
    kind: str                   # 'supernet' | 'search' | 'retrain'
    run_dir: Path               # the stage's --save directory
    marker: Path                # exists once the stage is done (retrain: its last epoch is logged, see `done`)
    command: list               # script (relative to the repository) and its flags
    resume: list = field(default_factory=list)     # flags that continue an interrupted run

    def __post_init__(self):
        assert self.kind in KINDS, self.kind

    def done(self):
        """Finished: a retrain writes model_best before its last epoch, so it is done when its last epoch is in
        metrics.jsonl; the other stages write their marker at the end."""
        return retrain_finished(self.run_dir) if self.kind == 'retrain' else self.marker.exists()

    def argv(self):
        return [str(a) for a in self.command + self.resume]


class Layout(NamedTuple):
    """Where a demo's stages write, under its --out directory."""
    supernet: Path
    wlm: Path                   # the wlm search
    angle: Path                 # the angle+wlm search
    retrain: Path               # the retraining of the best wlm cell
    baseline: Path              # the retraining of the baseline cell
    baseline_genotype: Path


def layout(out):
    return Layout(out / 'supernet', out / 'search-wlm', out / 'search-angle-wlm', out / 'retrain',
                  out / 'retrain-baseline', out / 'baseline_genotype.json')


def resume_flags(run_dir):
    """A run stopped early (its args.json is there) resumes, or starts over when it wrote no checkpoint yet."""
    return ['--resume', run_dir] if (run_dir / 'args.json').exists() else []


def stages(out, scale, seed=0):
    """The demo's stages, in order; every stage's --seed is the demo's."""
    cfg, d = SCALES[scale], layout(out)
    epochs = cfg['supernet'][cfg['supernet'].index('--epochs') + 1]
    final = d.supernet / f'checkpoint_epoch_{epochs}.pth.tar'
    data, seeded = ['--dataset', 'fashion-mnist'], ['--seed', seed]
    search = ['evolutionary_search/search.py', '--model_path', final, *cfg['search'], *seeded]
    retrain = ['retrain/retrain.py', *data, *cfg['retrain'], *seeded]
    return [
        Stage('1. supernet', 'supernet', d.supernet, final,
              ['train_supernet/train.py', *data, *cfg['supernet'], *seeded, '--save', d.supernet],
              resume_flags(d.supernet)),
        Stage('2a. search wlm', 'search', d.wlm, d.wlm / 'genotype.json',
              [*search, '--metric', 'wlm', '--save', d.wlm]),
        Stage('2b. search angle+wlm', 'search', d.angle, d.angle / 'genotype.json',
              [*search, '--metric', 'angle+wlm', '--wlm_weight', WLM_WEIGHT, '--init_model_path',
               d.supernet / 'checkpoint_epoch_0.pth.tar', '--save', d.angle]),
        Stage('3a. retrain searched', 'retrain', d.retrain, d.retrain / 'model_best.pth.tar',
              [*retrain, '--arch', d.wlm / 'genotype.json', '--save', d.retrain], resume_flags(d.retrain)),
        Stage('3b. retrain baseline', 'retrain', d.baseline, d.baseline / 'model_best.pth.tar',
              [*retrain, '--arch', d.baseline_genotype, '--save', d.baseline], resume_flags(d.baseline)),
    ]


def write_baseline(out, seed):
    """The baseline cell: drawn uniformly from the valid cells of the DARTS space with the demo's seed (the same
    seed, the same cell), written where stage 3b reads it."""
    path = layout(out).baseline_genotype
    space = get_space('darts')
    cand = space.uniform_sample(1, seed)[0]
    if not path.exists():
        space.save_result(path, cand, name=f'uniform_random_seed{seed}', seed=seed)
    return path


def retrain_finished(run_dir):
    """The retrain stage is done when its last epoch is in metrics.jsonl (model_best may come earlier)."""
    path, args_path = run_dir / 'metrics.jsonl', run_dir / 'args.json'
    if not path.exists() or not args_path.exists():
        return False
    lines = read_metrics(path)
    return bool(lines) and lines[-1]['epoch'] >= json.loads(args_path.read_text())['epochs']


def run_stage(stage):
    """Run one stage in its own process (its progress and log lines go to the console); UserError when it fails."""
    argv = stage.argv()
    print(f'== {stage.name}: python3 {" ".join(argv)}', flush=True)
    proc = subprocess.Popen([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=ROOT)
    try:
        proc.wait()
    except KeyboardInterrupt:       # Ctrl-C reaches the stage too: let it end on its own (files intact)
        proc.wait()
        raise
    if proc.returncode in (130, -signal.SIGINT):     # the stage alone was interrupted: so is the demo
        raise KeyboardInterrupt
    if proc.returncode != 0:
        raise UserError(f'demo stage {stage.name} failed (exit {proc.returncode}; its log: '
                        f'{stage.run_dir / "log.txt"}); fix the error above and rerun `bash demo.sh` to continue '
                        'where it stopped')


def read_state(path):
    """demo_state.json: {stage: [seconds, 'ran' | 'skipped']}, empty before the first stage finished."""
    if not path.exists():
        return {}
    state = json_document('--out', path, {}, 'the demo_state.json of a demo')
    if not all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], (int, float)) for v in state.values()):
        raise UserError(f'--out {path} is not the demo_state.json of a demo (an entry is not [seconds, how]); delete '
                        'it (the stages done are kept) and rerun')
    return state


def claim_settings(out, scale, seed):
    """demo.json records the scale and seed a demo directory was started with; another is refused, since the
    finished stages would be mixed with stages of other settings."""
    path, mine = out / 'demo.json', {'scale': scale, 'seed': seed}
    if path.exists():
        saved = json_document('--out', path, {'scale': str, 'seed': int}, 'the demo.json of a demo')
        if {k: saved[k] for k in mine} != mine:
            flags = f'--seed {saved["seed"]}' + (' --tiny' if saved['scale'] == 'tiny' else '')
            raise UserError(f'--out {out} holds a demo run with {flags}; rerun with those flags, pass --force to '
                            'start it over with these, or choose another --out')
        return
    atomic_write_text(path, json.dumps(mine, indent=2))


def run_stages(out, scale, seed=0):
    """Run what is not done yet; returns {stage: [seconds, 'ran' | 'skipped']}, kept in demo_state.json."""
    state_path = out / 'demo_state.json'
    state = read_state(state_path)
    write_baseline(out, seed)
    for stage in stages(out, scale, seed):
        if stage.done():
            print(f'== {stage.name}: done already ({stage.marker}); skipped', flush=True)
            state.setdefault(stage.name, [0.0, 'ran'])[1] = 'skipped'
            continue
        t0 = time.time()
        run_stage(stage)
        state[stage.name] = [time.time() - t0, 'ran']
        atomic_write_text(state_path, json.dumps(state, indent=2))
    atomic_write_text(state_path, json.dumps(state, indent=2))
    return state


# --- the report: built from the stages' public outputs (genotype.json, metrics.jsonl, args.json) ----------------

CHANCE = 0.1                    # Fashion-MNIST: 10 balanced classes
PARAMETRIC = ('sep_conv', 'dil_conv')


def plural(n, word):
    return f'{n} {word}' + ('' if n == 1 else 's')


def read_json(path):
    return json.loads(Path(path).read_text())


def cell_text(ops):
    """One cell as text: `n0 = op(input) + op(input); n1 = ...`, inputs k-2, k-1, n0, n1, ..."""
    names = ['k-2', 'k-1'] + [f'n{i}' for i in range(len(ops) // 2)]
    return '; '.join(f'n{i} = {ops[2 * i][0]}({names[ops[2 * i][1]]}) + {ops[2 * i + 1][0]}({names[ops[2 * i + 1][1]]})'
                     for i in range(len(ops) // 2))


def convolutions(genotype):
    """How many of the genotype's 16 edges are convolutions (the rest are pooling and skip connections)."""
    return sum(op.startswith(PARAMETRIC) for op, _ in genotype.normal + genotype.reduce)


def clean_loss_share(entry, s1):
    """In wlm's poor = |L1/s1| + sum |dL/ds|: the share of the first term, the loss at the smallest noise s1."""
    return abs(entry['losses'][0] / s1) / entry['poor']


def angle_share(entry):
    """In angle+wlm's score = angle/pi + w/s1 * wlm: the share of the angle term."""
    return entry['angle_normalized'] / entry['score']


def top_overlap(a, b):
    """How many candidates two top lists share."""
    return len({tuple(t['candidate']) for t in a} & {tuple(t['candidate']) for t in b})


def supernet_section(run_dir):
    """The supernet's random-path valid accuracy, against chance; a warning when it is under twice chance."""
    sn, args = read_metrics(run_dir / 'metrics.jsonl')[-1], read_json(run_dir / 'args.json')
    acc = sn['valid_acc']
    lines = ['## 1. Supernet', '',
             f'After {plural(sn["epoch"], "epoch")} a random path reaches **{100 * acc:.1f}%** valid accuracy (mean of '
             f'{args.get("valid_paths", 1)} random paths; train accuracy {100 * sn["train_acc"]:.1f}%), '
             f'{acc / CHANCE:.1f} times chance ({100 * CHANCE:.0f}%).', '']
    if acc < 2 * CHANCE:
        lines += ['**Warning: the supernet has barely learned** (under twice chance): the searches below rank cells '
                  'on weights that cannot yet tell them apart; train it longer (more `--epochs` or images).', '']
    return lines


def dominance_text(doc):
    """What decides the ranking of a search: the clean-loss share of poor (wlm), the angle share (angle+wlm)."""
    top, s1 = doc['top10'], doc['args']['stds'][0]
    if 'poor' not in top[0]:
        return []
    shares = [clean_loss_share(t, s1) for t in top]
    lines = [f'- In poor, the loss at the smallest noise |L1/s1| is {100 * shares[0]:.1f}% for the best candidate '
             f'({100 * min(shares):.1f}-{100 * max(shares):.1f}% over the top {len(top)})' +
             (': the score ranks the clean loss far more than the growth of the loss under noise.'
              if min(shares) > 0.9 else '; the rest is the growth of the loss under noise.')]
    if 'angle_normalized' in top[0]:
        shares = [angle_share(t) for t in top]
        lines.append(f'- The angle term angle/pi is {100 * shares[0]:.2f}% of the score for the best candidate '
                     f'({100 * min(shares):.2f}-{100 * max(shares):.2f}% over the top {len(top)}); the rest is the '
                     f'wlm term {doc["formula"].split(" + ", 1)[-1]}.')
    return lines


def search_section(run_dir, label):
    """One search: how much it scored, its progress plot, what dominates its score, its best 5 cells."""
    doc = read_json(run_dir / 'genotype.json')
    gens = read_metrics(run_dir / 'metrics.jsonl')
    lines = [f'### {label}: `{doc["metric"]}`, score = {doc["formula"]}', '',
             f'{gens[-1]["scored"]} candidates scored in {len(gens)} generations.', '', *dominance_text(doc), '']
    if (run_dir / 'search_progress.png').exists():
        lines += [f'![search progress]({run_dir.name}/search_progress.png)', '']
    lines += ['| rank | normal cell | reduce cell | convs | score |', '|---|---|---|---|---|']
    for i, t in enumerate(doc['top10'][:5], 1):
        g = genotypes.genotype_from_dict(t['genotype'])
        lines.append(f'| {i} | {cell_text(g.normal)} | {cell_text(g.reduce)} | {convolutions(g)}/16 | '
                     f'{t["score"]:.6g} |')
    return lines + ['']


def agreement_section(wlm_dir, angle_dir):
    """How far the two searches agree: top-10 overlap and the best cell; a warning when they agree entirely."""
    a, b = read_json(wlm_dir / 'genotype.json'), read_json(angle_dir / 'genotype.json')
    k = min(len(a['top10']), len(b['top10']))
    shared = top_overlap(a['top10'][:k], b['top10'][:k])
    same_best = a['candidate'] == b['candidate']
    lines = ['## 3. Do the two searches agree?', '',
             f'Their top {k} share {shared} of {k} candidates; the best cell is '
             f'{"the same" if same_best else "different"}.', '']
    if shared == k:
        lines += [f'**Warning: the searches agree entirely**: at --wlm_weight {WLM_WEIGHT} the angle term is too '
                  'small to change the ranking, so the second search adds nothing here.', '']
    return lines


class Retrained(NamedTuple):
    label: str
    genotype: object
    params: int
    macs: int
    final: dict                 # the last line of its metrics.jsonl


def retrained(run_dir, genotype_path, label, test):
    """A retrained network's size (built as its args.json says, for the test set's image size and classes) and its
    final test line."""
    rargs = read_json(run_dir / 'args.json')
    geno = genotypes.load_genotype(genotype_path)
    net = get_space(None).network(geno, rargs['init_channels'], test.num_classes, rargs['layers'])
    macs = count_macs(net, torch.zeros(1, 3, *test.images.shape[-2:]))
    return Retrained(label, geno, count_parameters(net), macs, read_metrics(run_dir / 'metrics.jsonl')[-1])


def retrain_table(rows, rargs, side):
    lines = ['## 4. The searched cell against a baseline', '',
             f'Both retrained from scratch with the same settings: C={rargs["init_channels"]}, {rargs["layers"]} '
             f'cells, {plural(rargs["epochs"], "epoch")} on {rargs["train_subset"] or "all"} training images, seed '
             f'{rargs["seed"]}; '
             f'tested on {rows[0].final["val_images"]} test images.', '',
             f'| cell | convs | parameters | multiply-adds per {side} image | test top-1 | top-5 |',
             '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r.label} | {convolutions(r.genotype)}/16 | {r.params / 1e6:.3f}M | {r.macs / 1e6:.1f}M | '
                     f'**{100 * r.final["val_top1"]:.2f}%** | {100 * r.final["val_top5"]:.2f}% |')
    if len(rows) == 2:
        diff = 100 * (rows[0].final['val_top1'] - rows[1].final['val_top1'])
        lines += ['', f'The searched cell is {abs(diff):.2f} points {"above" if diff >= 0 else "below"} the baseline. '
                  'Each is one short training run of one seed: rerun the demo with other `--seed`s before reading a '
                  'difference of a point or two.']
    return lines


def retrain_section(d):
    """The best wlm cell next to the baseline cell, retrained with the same settings, with their drawings."""
    rargs = read_json(d.retrain / 'args.json')
    test = load_arrays(rargs['dataset'], rargs.get('data'), train=False)
    runs = [(d.retrain, d.wlm / 'genotype.json', 'best of the `wlm` search')]
    if (d.baseline / 'metrics.jsonl').exists():
        runs.append((d.baseline, d.baseline_genotype, 'baseline: a uniformly random cell'))
    rows = [retrained(folder, geno, label, test) for folder, geno, label in runs]
    lines = retrain_table(rows, rargs, 'x'.join(map(str, test.images.shape[-2:])))
    for r, (folder, _, _) in zip(rows, runs):
        lines += ['', f'{r.label}: `{r.genotype}`', '', ' '.join(
            f'![{which} cell]({folder.name}/cell_{which}.png)' for which in ('normal', 'reduce')
            if (folder / f'cell_{which}.png').exists())]
    return lines + ['', PAPER_CONTEXT, '']


PAPER_CONTEXT = ('For scale: the paper searches on CIFAR with a supernet trained for hundreds of epochs and '
                 'retrains the chosen cells for hundreds more; its flatness cell searched on CIFAR-10 '
                 '(`GENAS_FLATNESS_CIFAR10`) reaches 76.0% top-1 on ImageNet at 5.6M parameters in the '
                 "reference's model zoo. This demo runs the same pipeline for minutes on Fashion-MNIST: it shows "
                 'the mechanics and the diagnostics, not those numbers.')


def wall_time_section(state, total):
    lines = ['## Wall time', '', '| stage | seconds | |', '|---|---|---|']
    lines += [f'| {name} | {sec:.0f} | {how} |' for name, (sec, how) in state.items()]
    return lines + [f'| whole demo (this invocation) | {total:.0f} | |', '']


def report(out, scale, state, total):
    """Markdown report of the run, written to <out>/report.md (also returned as text); its images are given
    relative to <out>."""
    d = layout(out)
    seed = read_json(out / 'demo.json')['seed'] if (out / 'demo.json').exists() else None
    lines = [f'# GeNAS demo report ({scale} scale, Fashion-MNIST, seed {seed})', '',
             f'Written on {Machine.here().line()}.', '',
             *supernet_section(d.supernet), '## 2. Searches', '',
             *search_section(d.wlm, '2a'), *search_section(d.angle, '2b'), *agreement_section(d.wlm, d.angle),
             *retrain_section(d), *wall_time_section(state, total),
             '## Where things are', '',
             f'- TensorBoard logs: `{out}/*/tb`; open them with `tensorboard --logdir {out}`',
             f'- logs and metrics: `{out}/*/log.txt`, `{out}/*/metrics.jsonl`', '']
    text = '\n'.join(lines)
    atomic_write_text(out / 'report.md', text)
    return text


# --- the command line -------------------------------------------------------------------------------------------

@dataclass
class DemoResult:
    out: Path                   # the demo's run directory
    report: str                 # the report's markdown (also in <out>/report.md)
    state: dict                 # {stage: [seconds, 'ran' | 'skipped']}


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--save', '--out', dest='out', metavar='DIR', default='runs/demo',
                   help='run directory of the demo (default: runs/demo)')
    p.add_argument('--tiny', action='store_true', help='tiny scale, for CI (default: off)')
    p.add_argument('--seed', type=int, default=0, help='seed of every stage and of the baseline cell (default: 0)')
    p.add_argument('--force', action='store_true', help='redo every stage (default: skip finished ones)')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f'--out {out} is an existing file, not a directory; choose another --out')
    if not 0 <= args.seed <= SEED_MAX:
        raise UserError(f'--seed must be between 0 and {SEED_MAX}, got {args.seed}')
    return args


@locks_released
def main(args):
    scale = 'tiny' if args.tiny else 'full'
    out = Path(args.out).resolve()
    lock_run_dir(out, 'demo')              # refuses a directory another kind of run wrote, before --force
    if args.force:
        for entry in out.iterdir():
            if entry.name != '.lock':
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        lock_run_dir(out, 'demo')
    claim_settings(out, scale, args.seed)
    t0 = time.time()
    state = run_stages(out, scale, args.seed)
    text = report(out, scale, state, time.time() - t0)
    print('\n' + text)
    return DemoResult(out, text, state)


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: 'rerun `python3 demo.py` with the same flags (finished stages '
            'are skipped, an interrupted one resumes)')
