"""The `confsync convert` subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from confsync.errors import EXIT_BAD_CONFIG, EXIT_OK, EXIT_RESOURCE_FAILED


def add_parser(sub: Any, help: str) -> None:
    convert = sub.add_parser("convert", help=help)
    convert.add_argument("confd_confdir", type=Path, metavar="CONFD_CONFDIR")
    convert.add_argument("new_confdir", type=Path, metavar="NEW_CONFDIR")
    convert.add_argument("--check", action="store_true",
                         help="then render the converted templates against --data")
    convert.add_argument("--data", type=Path, metavar="FILE",
                         help="YAML/JSON/TOML data for --check (confd's file backend reads "
                              "the same file)")
    convert.add_argument("--expect", type=Path, metavar="DIR",
                         help="with --check: files rendered by confd from the same data, "
                              "matched by dest file name; differences are shown")


def run(args: argparse.Namespace) -> int:
    from confsync.convert.check import check_conversion
    from confsync.convert.confdir import ConvertError, convert_confdir

    if args.check and args.data is None:
        print("confsync convert: --check needs --data FILE", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        report = convert_confdir(args.confd_confdir, args.new_confdir)
    except ConvertError as exc:
        print(f"confsync convert: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    for item in report.converted:
        print(f"converted {item}")
    for note in report.notes:
        print(f"review: {note}")
    print(f"wrote {args.new_confdir}")
    if args.check:
        code = check_conversion(args.new_confdir.absolute(), args.data, args.expect, sys.stdout)
        return EXIT_OK if code == 0 else EXIT_RESOURCE_FAILED
    return EXIT_OK
