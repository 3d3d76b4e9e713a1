"""Draw a genotype's normal and reduction cells as DARTS-style DAGs.

    python3 retrain/visualize.py --arch GENAS_FLATNESS_CIFAR100 --out cells/genas_flatness_c100
    python3 retrain/visualize.py --arch runs/search-wlm/genotype.json

Always writes <out>_normal.dot and <out>_reduce.dot (Graphviz text); where the `dot` program is
installed (Debian: graphviz) also renders .png and .pdf next to them.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere

import genotypes  # noqa: E402
from utils import ArgumentParser, atomic_write_text, run_cli, write_guard  # noqa: E402


def cell_dot(ops, concat, title):
    """Graphviz text of one cell: inputs c_{k-2}, c_{k-1}, intermediate nodes 0.., output c_{k}."""
    steps = len(ops) // 2
    names = ['c_{k-2}', 'c_{k-1}'] + [str(i) for i in range(steps)]
    lines = [f'digraph "{title}" {{', '  rankdir=LR;',
             '  node [style="rounded,filled", shape=rect, align=center, fontsize=20, height=1.5, width=1.5, '
             'penwidth=2, fontname="helvetica"];',
             '  edge [fontsize=20, fontname="times"];',
             f'  label="{title}"; labelloc=t;']
    for n in names[:2]:
        lines.append(f'  "{n}" [fillcolor=darkseagreen2];')
    for n in names[2:]:
        lines.append(f'  "{n}" [fillcolor=lightblue];')
    lines.append('  "c_{k}" [fillcolor=palegoldenrod];')
    for k, (op, inp) in enumerate(ops):
        lines.append(f'  "{names[inp]}" -> "{names[2 + k // 2]}" [label="{op}", fillcolor=gray];')
    for i in concat:
        lines.append(f'  "{names[i]}" -> "c_{{k}}" [fillcolor=gray];')
    lines.append('}')
    return '\n'.join(lines) + '\n'


def render(dot_text, stem, formats=('png', 'pdf')):
    """Write <stem>.dot; render the formats with `dot` when installed. Returns the written paths. Every file
    is written to a temporary name and moved into place; a failure (a full disk) is one UserError."""
    stem = Path(stem)
    with write_guard(stem.parent):
        stem.parent.mkdir(parents=True, exist_ok=True)
    dot_path = atomic_write_text(stem.with_suffix('.dot'), dot_text)
    written = [dot_path]
    exe = shutil.which('dot')
    if exe:
        for fmt in formats:
            out = stem.with_suffix(f'.{fmt}')
            tmp = out.with_name(out.name + '.tmp')
            proc = subprocess.run([exe, f'-T{fmt}', str(dot_path), '-o', str(tmp)], capture_output=True, text=True)
            with write_guard(out, tmp):
                if proc.returncode != 0:
                    reason = (proc.stderr.strip().splitlines() or ['no message'])[-1]
                    raise OSError(None, f'graphviz dot failed: {reason}')
                os.replace(tmp, out)
            written.append(out)
    return written


def plot_genotype(genotype, out_stem):
    """Both cells of a genotype: {'normal': [paths], 'reduce': [paths]}."""
    return {which: render(cell_dot(getattr(genotype, which), getattr(genotype, f'{which}_concat'), which),
                          f'{out_stem}_{which}')
            for which in ('normal', 'reduce')}


def get_args_parser():
    p = ArgumentParser(description='Draw the cells of a genotype.')
    p.add_argument('--arch', required=True, help='named genotype or genotype .json')
    p.add_argument('--out', default=None, help='output path stem; None means cells/<arch name>')
    return p


def parse_args(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.out is None:
        args.out = os.path.join('cells', Path(args.arch).stem if args.arch.endswith('.json') else args.arch)
    return args


def main(args):
    genotype = genotypes.resolve_genotype(args.arch)
    written = plot_genotype(genotype, args.out)
    for paths in written.values():
        for p in paths:
            print(p)
    if not shutil.which('dot'):
        print('graphviz `dot` not found: wrote .dot files only (apt-get install -y graphviz to render)',
              file=sys.stderr)
    return written


if __name__ == '__main__':
    run_cli(main, parse_args)
