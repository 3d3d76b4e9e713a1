"""The flag tables of the stage pages, generated from the CLIs' own parsers so that none is missing or stale.

    python3 docs/flags.py train_supernet.train       # print the markdown table of one CLI's flags
    python3 docs/flags.py --write                    # rewrite every table between its markers in docs/*.md
    python3 docs/flags.py --check                    # exit 1 when a page's table differs from its parser

A page holds a table between `<!-- flags: MODULE -->` and `<!-- /flags -->`. The CLI modules are named in
the markers and imported by name, like the tests import them: this tool documents their parsers and is
no part of the pipeline.
"""
import argparse
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARKED = re.compile(r'(<!-- flags: (?P<module>[\w.]+) -->\n)(?P<table>.*?)(<!-- /flags -->)', re.S)


def parser_of(module):
    """The argparse parser of a CLI module (its get_args_parser())."""
    return importlib.import_module(module).get_args_parser()


def _cell(text):
    return ' '.join(str(text).split()).replace('|', '\\|')


def _default(action):
    if action.default is None or action.default is argparse.SUPPRESS:
        return ''
    if isinstance(action.default, (list, tuple)):
        return '`' + ','.join(map(str, action.default)) + '`'
    if isinstance(action.default, bool):
        return 'on' if action.default else 'off'
    return f'`{action.default}`' if action.default != '' else "`''`"


def _meaning(action, prog):
    help = action.help or ''
    if '%' in help:
        help = help % {**vars(action), 'prog': prog}
    if action.choices and not any(str(c) in help for c in action.choices):
        help += ' (' + ', '.join(f'`{c}`' for c in action.choices) + ')'
    if action.required:
        help += ' (required)'
    return _cell(help)


def flag_rows(parser):
    """[(group title, [(flags, default, meaning)])] of every flag but --help, in the parser's order."""
    rows = []
    for group in parser._action_groups:       # argparse offers no public view of its groups
        actions = [a for a in group._group_actions if a.option_strings and a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._HelpAction)]
        if actions:
            rows.append((group.title, [(', '.join(f'`{s}`' for s in a.option_strings), _default(a),
                                        _meaning(a, parser.prog)) for a in actions]))
    return rows


def table(module):
    """The markdown table of a CLI's flags, one bold row per argument group."""
    lines = ['| flag | default | meaning |', '|---|---|---|']
    for title, rows in flag_rows(parser_of(module)):
        lines.append(f'| **{_cell(title)}** | | |')
        lines += [f'| {f} | {d} | {m} |' for f, d, m in rows]
    return '\n'.join(lines) + '\n'


def option_strings(module):
    """Every option string of a CLI (`--data_root`, `--data`, `-r`, ...), --help left out."""
    return [s for a in parser_of(module)._actions if not isinstance(a, argparse._HelpAction) for s in a.option_strings]


def regenerated(text):
    """The page's text with every marked table rebuilt from its parser."""
    return MARKED.sub(lambda m: m.group(1) + table(m.group('module')) + m.group(4), text)


def pages():
    return sorted((ROOT / 'docs').glob('*.md'))


def main(argv=None):
    p = argparse.ArgumentParser(description='Markdown flag tables of the CLIs, from their parsers.')
    p.add_argument('module', nargs='?', help='print the table of this CLI module (e.g. train_supernet.train)')
    p.add_argument('--write', action='store_true', help='rewrite the marked tables of docs/*.md')
    p.add_argument('--check', action='store_true', help='exit 1 when a marked table is out of date')
    args = p.parse_args(argv)
    if args.module:
        print(table(args.module), end='')
        return 0
    stale = [page for page in pages() if regenerated(page.read_text()) != page.read_text()]
    if args.write:
        for page in stale:
            page.write_text(regenerated(page.read_text()))
    for page in stale:
        print(f'{"rewrote" if args.write else "out of date"}: {page.relative_to(ROOT)}')
    return 1 if stale and args.check else 0


if __name__ == '__main__':
    sys.exit(main())
