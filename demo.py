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
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

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


def stages(out, scale):
    """(name, done-marker, command, resume flags) of each stage, in order."""
    cfg = SCALES[scale]
    sn = out / 'supernet'
    epochs = cfg['supernet'][cfg['supernet'].index('--epochs') + 1]
    final = sn / f'checkpoint_epoch_{epochs}.pth.tar'
    data = ['--dataset', 'fashion-mnist']
    search = ['--model_path', final, *cfg['search']]
    return [
        ('1. supernet', final, ['train_supernet/train.py', *data, *cfg['supernet'], '--save', sn],
         ['--resume', sn] if (sn / 'args.json').exists() else []),     # a run stopped early resumes or starts over
        ('2a. search wlm', out / 'search-wlm' / 'genotype.json',
         ['evolutionary_search/search.py', *search, '--metric', 'wlm', '--save', out / 'search-wlm'], []),
        ('2b. search angle+wlm', out / 'search-angle-wlm' / 'genotype.json',
         ['evolutionary_search/search.py', *search, '--metric', 'angle+wlm', '--wlm_weight', 16,
          '--init_model_path', sn / 'checkpoint_epoch_0.pth.tar', '--save', out / 'search-angle-wlm'], []),
        ('3. retrain', out / 'retrain' / 'model_best.pth.tar',
         ['retrain/retrain.py', *data, '--arch', out / 'search-wlm' / 'genotype.json', *cfg['retrain'],
          '--save', out / 'retrain'],
         ['--resume', out / 'retrain'] if (out / 'retrain' / 'args.json').exists() else []),
    ]


def retrain_finished(out):
    """The retrain stage is done when its last epoch is in metrics.jsonl (model_best may come earlier)."""
    path = out / 'retrain' / 'metrics.jsonl'
    args_path = out / 'retrain' / 'args.json'
    if not path.exists() or not args_path.exists():
        return False
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return bool(lines) and lines[-1]['epoch'] >= json.loads(args_path.read_text())['epochs']


def run_stages(out, scale):
    """Run what is not done yet; returns {stage: [seconds, 'ran' | 'skipped']}, kept in demo_state.json."""
    state_path = out / 'demo_state.json'
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    for name, marker, cmd, resume in stages(out, scale):
        done = retrain_finished(out) if name.startswith('3') else marker.exists()
        if done:
            print(f'== {name}: done already ({marker}); skipped', flush=True)
            state.setdefault(name, [0.0, 'ran'])[1] = 'skipped'
            continue
        argv = [str(a) for a in cmd + resume]
        print(f'== {name}: python3 {" ".join(argv)}', flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=ROOT)
        if proc.returncode != 0:
            sys.exit(f'demo: stage {name} failed (exit {proc.returncode}); fix the error above and rerun '
                     '`bash demo.sh` to continue where it stopped')
        state[name] = [time.time() - t0, 'ran']
        state_path.write_text(json.dumps(state, indent=2))
    state_path.write_text(json.dumps(state, indent=2))
    return state


def report(out, scale, state, total):
    """Markdown report of the run (also returned as text)."""
    import torch
    import genotypes
    from spaces.darts_network import NetworkCIFAR
    from counting import count_macs, count_parameters
    from utils import read_metrics
    sn = read_metrics(out / 'supernet' / 'metrics.jsonl')[-1]
    lines = [f'# GeNAS demo report ({scale} scale, Fashion-MNIST, CPU)', '',
             f'Supernet (stage 1): valid accuracy of a random path {100 * sn["valid_acc"]:.1f}% after '
             f'{sn["epoch"]} epochs (train accuracy {100 * sn["train_acc"]:.1f}%).', '']
    for label, folder in (('wlm', 'search-wlm'), ('angle+wlm', 'search-angle-wlm')):
        doc = json.loads((out / folder / 'genotype.json').read_text())
        scored = len(json.loads((out / folder / 'search_checkpoint.json').read_text())['evolution']['scores'])
        lines += [f'## Search: {label} (the best 5 of {scored} candidates scored)', '',
                  '| rank | candidate | score | components |', '|---|---|---|---|']
        for i, t in enumerate(doc['top10'][:5], 1):
            comps = ', '.join(f'{k} {v:.4g}' for k, v in t.items() if isinstance(v, float) and k != 'score')
            lines.append(f'| {i} | `{",".join(map(str, t["candidate"]))}` | {t["score"]:.6g} | {comps} |')
        lines.append('')
    rargs = json.loads((out / 'retrain' / 'args.json').read_text())
    geno = genotypes.load_genotype(out / 'search-wlm' / 'genotype.json')
    net = NetworkCIFAR(rargs['init_channels'], 10, rargs['layers'], False, geno)
    params, macs = count_parameters(net), count_macs(net, torch.zeros(1, 3, 32, 32))
    final = read_metrics(out / 'retrain' / 'metrics.jsonl')[-1]
    lines += ['## Retrained genotype (best of the wlm search)', '', f'`{geno}`', '',
              f'- NetworkCIFAR C={rargs["init_channels"]}, {rargs["layers"]} layers: {params / 1e6:.3f}M parameters, '
              f'{macs / 1e6:.1f}M multiply-adds per 32x32 image',
              f'- test accuracy after {final["epoch"]} epochs: **{100 * final["val_top1"]:.2f}%** '
              f'(top-5 {100 * final["val_top5"]:.2f}%, {final["val_images"]} test images)', '',
              '## Wall time', '', '| stage | seconds | |', '|---|---|---|']
    lines += [f'| {name} | {sec:.0f} | {how} |' for name, (sec, how) in state.items()]
    lines += [f'| whole demo (this invocation) | {total:.0f} | |', '', '## Where things are', '',
              f'- cell diagrams: `{out / "retrain"}/cell_normal.*`, `cell_reduce.*`',
              f'- TensorBoard logs: `{out}/*/tb`; open them with `tensorboard --logdir {out}`',
              f'- logs and metrics: `{out}/*/log.txt`, `{out}/*/metrics.jsonl`', '']
    text = '\n'.join(lines)
    (out / 'report.md').write_text(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='runs/demo', help='run directory of the demo (default: runs/demo)')
    p.add_argument('--tiny', action='store_true', help='tiny scale, for CI (default: off)')
    p.add_argument('--force', action='store_true', help='redo every stage (default: skip finished ones)')
    args = p.parse_args(argv)
    scale = 'tiny' if args.tiny else 'full'
    out = Path(args.out).resolve()
    if args.force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    state = run_stages(out, scale)
    text = report(out, scale, state, time.time() - t0)
    print('\n' + text)
    return out


if __name__ == '__main__':
    main()
