"""fast_argv reads a plain `once` or `check` command line exactly as argparse does, and leaves
every other one to argparse (whose errors and help it never has to copy)."""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import pytest

from confsync.cli import build_parser
from confsync.fast_argv import parse_plain


def argparse_reads(argv: list[str]) -> dict[str, object] | None:
    """argparse's namespace for argv, as a dict; None when it refuses it (or shows help)."""
    parser = build_parser(argv[0] if argv else None)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(parser.parse_args(argv))
    except SystemExit:
        return None


PLAIN = [
    ["once"],
    ["check"],
    ["once", "--confdir", "/etc/confsync", "--endpoints", "http://127.0.0.1:2379", "--prefix",
     "/o", "--log-level", "error"],
    ["once", "--confdir=/c", "--backend=file", "--file", "a.yaml", "--file=b.json"],
    ["once", "--config", "/etc/c.toml", "--srv-domain", "example.com", "--log-format", "json"],
    ["once", "--prefix", "", "--prefix", "/second", "--backend", "env"],  # the last one counts
    ["once", "--prefix=a=b", "--endpoints", "https://h:1,https://h:2"],
    ["once", "--confdir", "dir with spaces", "--log-level", "debug"],
    ["check", "--no-diff", "--data", "fixture.yaml", "--confdir", "/c"],
    ["check", "--diff", "--no-diff", "--diff", "--data=", "--backend", "etcd"],
    ["check", "--log-level=warning", "--file", "x", "--no-diff"],
]

NOT_PLAIN = [
    [], ["watch"], ["register", "--confdir", "/c"], ["convert"], ["--version"], ["--help"],
    ["once", "--help"], ["once", "-h"], ["check", "-h"],
    ["once", "--conf", "/c"],  # an abbreviation (argparse: ambiguous)
    ["once", "--confd", "/c"],  # an abbreviation argparse takes: it reads it, not us
    ["once", "--confdir"],  # no value
    ["once", "--confdir", "--prefix", "/p"],  # a value that is an option
    ["once", "--prefix", "-x"], ["once", "--prefix=-x"], ["once", "--prefix", "-1"],
    ["once", "--prefix", "-"],
    ["once", "--backend", "consul"], ["once", "--log-level=trace"], ["once", "--log-format", "xml"],
    ["once", "--diff"], ["once", "--data", "f"],  # check's options
    ["check", "--diff=yes"], ["check", "--no-diff=1"],
    ["once", "stray"], ["once", "--"], ["once", "--", "--prefix", "/p"],
    ["once", "--wait-min", "1s"], ["once", "--exec", "x"],
    ["Once"], ["once", "--Prefix", "/p"],
]


@pytest.mark.parametrize("argv", PLAIN, ids=" ".join)
def test_a_plain_command_line_reads_as_argparse_reads_it(argv: list[str]) -> None:
    fast = parse_plain(argv)
    assert fast is not None
    assert vars(fast) == argparse_reads(argv)


@pytest.mark.parametrize("argv", NOT_PLAIN, ids=" ".join)
def test_any_other_command_line_is_left_to_argparse(argv: list[str]) -> None:
    assert parse_plain(argv) is None


def test_every_pair_of_options_reads_as_argparse_reads_it() -> None:
    """Each option of `once` and `check`, in both spellings, beside each other one."""
    words = [["--config", "c"], ["--confdir=d"], ["--backend", "file"], ["--backend=env"],
             ["--endpoints", "http://e:1"], ["--srv-domain=s"], ["--prefix", "/p"],
             ["--file", "f"], ["--file=g"], ["--log-level", "info"], ["--log-format=text"]]
    check_words = [*words, ["--diff"], ["--no-diff"], ["--data", "x.yaml"], ["--data=y"]]
    for command, options in (("once", words), ("check", check_words)):
        for first, second in itertools.product(options, repeat=2):
            argv = [command, *first, *second]
            fast = parse_plain(argv)
            assert fast is not None, argv
            assert vars(fast) == argparse_reads(argv), argv


def test_the_options_are_the_parsers_options() -> None:
    """An option added to `once` or `check` in cli.py and not here fails this test (a command
    line using it would still be read, by argparse, but every option should be plain)."""
    for command in ("once", "check"):
        sub = build_parser(command)._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                value = [] if action.nargs == 0 else ["v" if not action.choices else
                                                      next(iter(action.choices))]
                argv = [command, option, *value]
                assert parse_plain(argv) is not None, argv
                assert vars(parse_plain(argv)) == argparse_reads(argv), argv  # type: ignore[arg-type]


def test_data_is_a_path() -> None:
    fast = parse_plain(["check", "--data", "f.yaml"])
    assert fast is not None and fast.data == Path("f.yaml")
