"""Graphviz drawings of a genotype's normal and reduction cells as DARTS-style DAGs (.dot text always; .png and
.pdf where the `dot` program is installed)."""
import os
import shutil
import subprocess
from pathlib import Path

from utils import atomic_write_text, write_guard


def cell_dot(ops, concat, title):
    """Graphviz text of one cell: inputs c_{k-2}, c_{k-1}, intermediate nodes 0.., output c_{k}."""
    steps = len(ops) // 2
    names = ['c_{k-2}', 'c_{k-1}'] + [str(i) for i in range(steps)]
    lines = [f'digraph "{title}" {{', '  rankdir=LR;',
             '  node [style="rounded,filled", shape=rect, align=center, fontsize=20, height=1.5, width=1.5, '
             'penwidth=2, fontname="helvetica"];',
             '  edge [fontsize=20, fontname="times"];',
             f'  label="{title}"; labelloc=t; nodesep=0.5; ranksep=0.9;']
    for n in names[:2]:
        lines.append(f'  "{n}" [fillcolor=darkseagreen2];')
    for n in names[2:]:
        lines.append(f'  "{n}" [fillcolor=lightblue];')
    lines.append('  "c_{k}" [fillcolor=palegoldenrod];')
    for k, (op, inp) in enumerate(ops):
        lines.append(f'  "{names[inp]}" -> "{names[2 + k // 2]}" [label="{op}", fillcolor=gray];')
    for i in concat:
        lines.append(f'  "{names[i]}" -> "c_{{k}}" [fillcolor=gray];')
    # Invisible edges 0 -> 1 -> ... keep the intermediate nodes in their order from left to right (graphviz
    # would otherwise stack nodes that share their inputs in any order).
    for a, b in zip(names[2:], names[3:]):
        lines.append(f'  "{a}" -> "{b}" [style=invis, weight=4];')
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
