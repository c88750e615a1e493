"""`esft <stage>`: every workflow stage as a plain command, for debugging without Snakemake.

Config slices arrive as JSON (`--cfg '{"sigma": 0.01}'`) or as a path to a YAML/JSON file.
"""

# The docstring above is `esft --help`'s description. The commands live in one module per stage (data,
# train, evaluate, geometry, report), each declared beside its handler; `args` holds what they share.

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from esft.cli import data, evaluate, geometry, report, train

log = logging.getLogger("esft")

STAGES = (data, train, evaluate, geometry, report)
"""The stage modules, in the order `esft --help` lists their commands."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="esft", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="stage", required=True)
    for command in (c for module in STAGES for c in module.stage.commands):
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.set_defaults(func=command.run)
        for add in command.arguments:
            add(p)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from esft.errors import EsftError

    try:
        args.func(args)
    except EsftError as err:
        log.error("%s", err)
        raise SystemExit(1) from None
