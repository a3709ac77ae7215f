"""confd itself as the reference: ~1,400 small Go templates (tests/support/confd_corpus.py: every
confd function, Go's control flow, printf verbs over every operand type, comparisons of every
pair of kinds, hostile keys and values, YAML scalars) converted and rendered by confsync must
give confd's bytes. confd's output is recorded under tests/fixtures/confd_diff/ (CI has no
confd); with /tmp/confd-bin/confd (or $CONFD_BIN) present, confd is run again to check that the
recording is still what it renders.

Where confsync cannot give confd's bytes it must fail loudly (refuse at conversion, or fail the
render), never render something else, except for the differences README's "Coming from confd"
documents, listed in DOCUMENTED.
"""

from __future__ import annotations

import re

import pytest

from tests.support.confd_corpus import CASE_SETS
from tests.support.confd_diff import CONFD, load_golden, load_mirror, render_ours, run_confd

# Documented differences where both sides render (README, "Coming from confd").
DOCUMENTED = {
    # confsync's keys are relative to the resource prefix, with or without a leading slash;
    # confd finds no key not starting with "/"
    "functions/getv_no_slash", "functions/gets_no_slash", "functions/exists_no_slash",
    # confd's ls "/" lists only top-level keys, lsdir "/" nothing (memkv's path terms of "/"
    # are ["", ""]): a confd bug
    "functions/ls_root", "functions/lsdir_root",
    # sortByLength is stable; Go's sort.Sort is not past 12 items
    "functions/sortByLength_many", "hostile/many_sortbylength",
}
# Why confsync may fail where confd renders: a value with a line break or control character
# (confsync refuses to write it unless the template says `| multiline`), and the constructs
# the converter refuses by name (js, slice, break/continue, %T, %#v, ...), base64Decode of
# bytes that are not UTF-8 (confd writes them raw; confsync writes text).
LOUD = re.compile(r"line break or control character|refused|not reproduced|not UTF-8 text")


def _compare(set_name: str, confd: dict[str, str | None]) -> list[str]:
    data_yaml, cases = CASE_SETS[set_name]
    mirror = load_mirror(data_yaml)
    problems = []
    for name, template in cases.items():
        key = f"{set_name}/{name}"
        ours = render_ours(template, mirror, name)
        expected = confd[name]
        if key in DOCUMENTED:
            continue
        if ours.text == expected:
            continue
        if expected is not None and ours.text is None and LOUD.search(
                ours.refused or ours.error or ""):
            continue
        if expected is None and ours.text is None:
            continue  # confd failed; confsync refused or failed too
        problems.append(f"{key}: template {template!r}\n   confd:    {expected!r}\n"
                        f"   confsync: {ours.text!r} {ours.refused or ours.error or ''}")
    return problems


@pytest.mark.parametrize("set_name", sorted(CASE_SETS))
def test_converted_templates_render_confds_bytes(set_name: str) -> None:
    problems = _compare(set_name, load_golden(set_name))
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not CONFD.exists(), reason=f"no confd binary at {CONFD}")
@pytest.mark.parametrize("set_name", sorted(CASE_SETS))
def test_the_recording_is_what_confd_renders(set_name: str) -> None:
    data_yaml, cases = CASE_SETS[set_name]
    assert run_confd(CONFD, data_yaml, cases) == load_golden(set_name)


def test_the_corpus_is_large_and_mostly_identical() -> None:
    total = sum(len(cases) for _, cases in CASE_SETS.values())
    assert total >= 1400
    rendered_by_confd = sum(v is not None for name in CASE_SETS
                            for v in load_golden(name).values())
    assert rendered_by_confd >= 1000


def test_ls_of_a_key_lists_its_own_name_as_confd_does() -> None:
    """memkv's List gives a key's own name for `ls` of that key, and templates test a key with
    `{{if ls $key}}` (Calico's route reflector: its whole BGP config sits under one). confsync
    listed nothing, so the file rendered without it, silently. Expected bytes from confd 0.17."""
    mirror = load_mirror("rr:\n  10.0.0.5: x\n  10.0.0.6: y\n")
    template = ('{{if ls "/rr/10.0.0.5"}}peer{{else}}none{{end}} {{ls "/rr/10.0.0.5"}} '
                '{{ls "/rr/missing"}} {{ls "/rr/10.0.0.5/"}} {{ls "/rr"}}\n')
    ours = render_ours(template, mirror, "ls_key")
    assert ours.text == "peer [10.0.0.5] [] [] [10.0.0.5 10.0.0.6]\n", ours
