"""The whole GeNAS pipeline on Fashion-MNIST, offline on a CPU, with a report at the end.

    bash demo.sh                 # sets up what is missing, then runs this (about 10 minutes on 2 cores)
    python3 demo.py --tiny       # seconds; what CI runs
    python3 demo.py --force      # redo every stage

Stages (each its own CLI, each with a progress bar): 1. a small SPOS supernet; 2. a flatness (wlm)
search and, for comparison, an angle+wlm search over the same supernet; 3. retraining of the best
wlm genotype. A finished stage is skipped when the demo runs again, an interrupted one resumes.
The report goes to the console and to <out>/report.md.
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

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import genotypes  # noqa: E402
from counting import count_macs, count_parameters  # noqa: E402
from data import load_arrays  # noqa: E402
from inputs import json_document  # noqa: E402
from spaces import get_space  # noqa: E402
from utils import ArgumentParser, UserError, atomic_write_text, lock_run_dir, locks_released, read_metrics, run_cli  # noqa: E402,E501

SCALES = {
    'full': {
        'supernet': ['--init_channels', 8, '--layers', 5, '--epochs', 2, '--train_subset', 3000,
                     '--valid_subset', 2000, '--learning_rate', 0.05],
        'search': ['--max_epochs', 3, '--population_num', 8, '--select_num', 4, '--mutation_num', 3,
                   '--crossover_num', 3, '--max_train_img_size', 256, '--max_val_img_size', 256],
        'retrain': ['--init_channels', 12, '--layers', 3, '--epochs', 3, '--batch_size', 64, '--learning_rate', 0.05,
                    '--train_subset', 10000, '--no-auxiliary', '--drop_path_prob', 0, '--cutout_length', 0],
    },
    'tiny': {
        'supernet': ['--init_channels', 4, '--layers', 3, '--epochs', 1, '--train_subset', 512,
                     '--valid_subset', 256, '--valid_bn_images', 128],
        'search': ['--max_epochs', 2, '--population_num', 4, '--select_num', 2, '--mutation_num', 1,
                   '--crossover_num', 1, '--max_train_img_size', 64, '--max_val_img_size', 128],
        'retrain': ['--init_channels', 8, '--layers', 3, '--epochs', 1, '--batch_size', 64, '--learning_rate', 0.05,
                    '--train_subset', 1024, '--test_subset', 500, '--no-auxiliary', '--drop_path_prob', 0,
                    '--cutout_length', 0],
    },
}


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


def resume_flags(run_dir):
    """A run stopped early (its args.json is there) resumes, or starts over when it wrote no checkpoint yet."""
    return ['--resume', run_dir] if (run_dir / 'args.json').exists() else []


def stages(out, scale):
    """The demo's stages, in order."""
    cfg = SCALES[scale]
    sn, wlm, angle, retrain = out / 'supernet', out / 'search-wlm', out / 'search-angle-wlm', out / 'retrain'
    epochs = cfg['supernet'][cfg['supernet'].index('--epochs') + 1]
    final = sn / f'checkpoint_epoch_{epochs}.pth.tar'
    data = ['--dataset', 'fashion-mnist']
    search = ['evolutionary_search/search.py', '--model_path', final, *cfg['search']]
    return [
        Stage('1. supernet', 'supernet', sn, final, ['train_supernet/train.py', *data, *cfg['supernet'], '--save', sn],
              resume_flags(sn)),
        Stage('2a. search wlm', 'search', wlm, wlm / 'genotype.json', [*search, '--metric', 'wlm', '--save', wlm]),
        Stage('2b. search angle+wlm', 'search', angle, angle / 'genotype.json',
              [*search, '--metric', 'angle+wlm', '--wlm_weight', 16, '--init_model_path',
               sn / 'checkpoint_epoch_0.pth.tar', '--save', angle]),
        Stage('3. retrain', 'retrain', retrain, retrain / 'model_best.pth.tar',
              ['retrain/retrain.py', *data, '--arch', wlm / 'genotype.json', *cfg['retrain'], '--save', retrain],
              resume_flags(retrain)),
    ]


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


def run_stages(out, scale):
    """Run what is not done yet; returns {stage: [seconds, 'ran' | 'skipped']}, kept in demo_state.json."""
    state_path = out / 'demo_state.json'
    state = read_state(state_path)
    for stage in stages(out, scale):
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

def supernet_section(run_dir):
    sn = read_metrics(run_dir / 'metrics.jsonl')[-1]
    return [f'Supernet (stage 1): valid accuracy of a random path {100 * sn["valid_acc"]:.1f}% after '
            f'{sn["epoch"]} epochs (train accuracy {100 * sn["train_acc"]:.1f}%).', '']


def search_section(run_dir):
    """The best 5 candidates of a search (genotype.json) and how many it scored (its last generation's line)."""
    doc = json.loads((run_dir / 'genotype.json').read_text())
    scored = read_metrics(run_dir / 'metrics.jsonl')[-1]['scored']
    lines = [f'## Search: {doc["metric"]} (the best 5 of {scored} candidates scored)', '',
             '| rank | candidate | score | components |', '|---|---|---|---|']
    for i, t in enumerate(doc['top10'][:5], 1):
        comps = ', '.join(f'{k} {v:.4g}' for k, v in t.items() if isinstance(v, float) and k != 'score')
        lines.append(f'| {i} | `{",".join(map(str, t["candidate"]))}` | {t["score"]:.6g} | {comps} |')
    return lines + ['']


def retrain_section(run_dir, genotype_path):
    """The retrained network's size (built as the retrain run's args.json says, for its dataset's image size and
    classes) and its final test accuracy."""
    rargs = json.loads((run_dir / 'args.json').read_text())
    test = load_arrays(rargs['dataset'], rargs.get('data'), train=False)
    height, width = test.images.shape[-2:]
    geno = genotypes.load_genotype(genotype_path)
    net = get_space(None).network(geno, rargs['init_channels'], test.num_classes, rargs['layers'])
    params, macs = count_parameters(net), count_macs(net, torch.zeros(1, 3, height, width))
    final = read_metrics(run_dir / 'metrics.jsonl')[-1]
    return ['## Retrained genotype (best of the wlm search)', '', f'`{geno}`', '',
            f'- {type(net).__name__} C={rargs["init_channels"]}, {rargs["layers"]} layers: {params / 1e6:.3f}M '
            f'parameters, {macs / 1e6:.1f}M multiply-adds per {height}x{width} image',
            f'- test accuracy after {final["epoch"]} epochs: **{100 * final["val_top1"]:.2f}%** '
            f'(top-5 {100 * final["val_top5"]:.2f}%, {final["val_images"]} test images)', '']


def wall_time_section(state, total):
    lines = ['## Wall time', '', '| stage | seconds | |', '|---|---|---|']
    lines += [f'| {name} | {sec:.0f} | {how} |' for name, (sec, how) in state.items()]
    return lines + [f'| whole demo (this invocation) | {total:.0f} | |', '']


def report(out, scale, state, total):
    """Markdown report of the run, written to <out>/report.md (also returned as text)."""
    by_kind = {}
    for stage in stages(out, scale):
        by_kind.setdefault(stage.kind, []).append(stage)
    supernet, retrain = by_kind['supernet'][0], by_kind['retrain'][0]
    lines = [f'# GeNAS demo report ({scale} scale, Fashion-MNIST, CPU)', '', *supernet_section(supernet.run_dir)]
    for stage in by_kind['search']:
        lines += search_section(stage.run_dir)
    lines += retrain_section(retrain.run_dir, retrain.command[retrain.command.index('--arch') + 1])
    lines += wall_time_section(state, total)
    lines += ['## Where things are', '',
              f'- cell diagrams: `{retrain.run_dir}/cell_normal.*`, `cell_reduce.*`',
              f'- TensorBoard logs: `{out}/*/tb`; open them with `tensorboard --logdir {out}`',
              f'- logs and metrics: `{out}/*/log.txt`, `{out}/*/metrics.jsonl`', '']
    text = '\n'.join(lines)
    (out / 'report.md').write_text(text)
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
    p.add_argument('--force', action='store_true', help='redo every stage (default: skip finished ones)')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f'--out {out} is an existing file, not a directory; choose another --out')
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
    t0 = time.time()
    state = run_stages(out, scale)
    text = report(out, scale, state, time.time() - t0)
    print('\n' + text)
    return DemoResult(out, text, state)


if __name__ == '__main__':
    run_cli(main, parse_args, resume_hint=lambda args: 'rerun `python3 demo.py` with the same flags (finished stages '
            'are skipped, an interrupted one resumes)')
