"""Go text/template -> Jinja2, construct by construct: the Jinja the converter writes (readable,
whitespace controlled per tag) and the output confsync renders from it, which is Go's output
(each expected output below was produced by Go's text/template, tests/support/gotmpl)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.convert.gotemplate import GoTemplateError
from confsync.convert.jinja import convert_template
from tests.support.gorender import build_gotmpl, convert_and_render, go_available, render_go

DATA = {"/a": "x", "/l/1": "one", "/l/2": "two",
        "/j": '{"n": 8080, "big": 1000000, "f": 0.5, "l": [1, "s", null]}'}

CASES = [
    ('text',
     'plain text\n',
     'plain text\n',
     'plain text\n'),
    ('getv',
     '{{ getv "/a" }}\n',
     '{{ getv("/a") }}\n',
     'x\n'),
    ('trim_both',
     'x  {{- getv "/a" -}}  \n y\n',
     'x{{ getv("/a") }}y\n',
     'xxy\n'),
    ('trim_newlines',
     'list:\n{{- range getvs "/l/*" }}\n  - {{ . }}\n{{- end }}\n',
     'list:{% for item in getvs("/l/*") +%}\n  - {{ item }}{% endfor +%}\n',
     'list:\n  - one\n  - two\n'),
    ('range_no_trim',
     '{{ range getvs "/l/*" }}\n{{ . }}\n{{ end }}\n',
     '{% for item in getvs("/l/*") +%}\n{{ item }}\n{% endfor +%}\n',
     '\none\n\ntwo\n\n'),
    ('indented_tags',
     '  {{ if true }}\n  in\n  {{ end }}\n',
     '  {%+ if true +%}\n  in\n  {%+ endif +%}\n',
     '  \n  in\n  \n'),
    ('range_else',
     '{{ range getvs "/none/*" }}{{ . }}{{ else }}empty{{ end }}\n',
     '{% for item in getvs("/none/*") %}{{ item }}{% else %}empty{% endfor +%}\n',
     'empty\n'),
    ('range_index_value',
     '{{ range $i, $v := getvs "/l/*" }}{{ $i }}={{ $v }} {{ end }}\n',
     '{% for i, v in go_items(getvs("/l/*")) %}{{ i }}={{ v }} {% endfor +%}\n',
     '0=one 1=two \n'),
    ('nested_dollar',
     '{{ $p := "p" }}{{ range $i, $a := getvs "/l/*" }}{{ range $j, $b := getvs "/l/*" }}{{ $p }}{{ $i }}{{ $j }}{{ $ }} {{ end }}{{ end }}\n',
     '{% set p = "p" %}{% for i, a in go_items(getvs("/l/*")) %}{% for j, b in go_items(getvs("/l/*")) %}{{ p }}{{ i }}{{ j }}{{ none | go_str }} {% endfor %}{% endfor +%}\n',
     'p00<no value> p01<no value> p10<no value> p11<no value> \n'),
    ('range_map',
     '{{ range $k, $v := map "b" 2 "a" 1 }}{{ $k }}{{ $v }}{{ end }}\n',
     '{% for k, v in go_items(map("b", 2, "a", 1)) %}{{ k | go_str }}{{ v | go_str }}{% endfor +%}\n',
     'a1b2\n'),
    ('if_else_if',
     '{{ $x := getv "/a" }}{{ if eq $x "1" }}one{{ else if eq $x "x" "y" }}xy{{ else }}other{{ end }}\n',
     '{% set x = getv("/a") %}{% if (x == "1") %}one{% elif (x == "x" or x == "y") %}xy{% else %}other{% endif +%}\n',
     'xy\n'),
    ('with_else',
     '{{ with getv "/missing" "" }}{{ . }}{{ else }}none{{ end }}\n',
     '{% set v_with = getv("/missing", "") %}{% if v_with %}{{ v_with }}{% else %}none{% endif +%}\n',
     'none\n'),
    ('and_or_operands',
     '{{ or "" "b" }} {{ and "a" "" }}| {{ and 1 2 }} {{ not "" }}\n',
     '{{ ("" or "b") }} {{ ("a" and "") }}| {{ (1 and 2) }} {{ (not "") | go_str }}\n',
     'b | 2 true\n'),
    ('comparisons',
     '{{ lt 1 2 }} {{ le 3 2 }} {{ gt "b" "a" }} {{ ge 2 2 }} {{ ne "a" "a" }}\n',
     '{{ (1 < 2) | go_str }} {{ (3 <= 2) | go_str }} {{ ("b" > "a") | go_str }} {{ (2 >= 2) | go_str }} {{ ("a" != "a") | go_str }}\n',
     'true false true true false\n'),
    ('len_index',
     '{{ len "héllo" }} {{ len (getvs "/l/*") }} {{ index (split "a:b" ":") 1 }}\n',
     '{{ go_len("h\\xe9llo") }} {{ ((getvs("/l/*")) | length) }} {{ go_index((split("a:b", ":")), 1) }}\n',
     '6 2 b\n'),
    ('assignment_in_loop',
     '{{ $n := 0 }}{{ range getvs "/l/*" }}{{ $n = add $n 1 }}{{ end }}{{ $n }}\n',
     '{% set n = namespace(v=0) %}{% for item in getvs("/l/*") %}{% set n.v = add(n.v, 1) %}{% endfor %}{{ n.v }}\n',
     '2\n'),
    ('shadowing',
     '{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}\n',
     '{% set x = 1 %}{% if true %}{% set x2 = 2 %}{{ x2 }}{% endif %}{{ x }}\n',
     '21\n'),
    ('define_template',
     '{{ define "t" }}[{{ . }}]{{ end }}{{ template "t" "a" }}{{ template "t" (getv "/a") }}\n',
     '{% set t = "a" %}[{{ t }}]{% set t2 = (getv("/a")) %}[{{ t2 }}]\n',
     '[a][x]\n'),
    ('block',
     '{{ block "b" "x" }}<{{ . }}>{{ end }}\n',
     '{% set b = "x" %}<{{ b }}>\n',
     '<x>\n'),
    ('comment',
     '{{/* note */}}a {{- /* trimmed */ -}} b\n',
     '{# note #}a{# trimmed #}b\n',
     'ab\n'),
    ('printf',
     '{{ printf "%-4s|%3d|%.1f|%q|%v" "ab" 7 2.25 "q" true }}\n',
     '{{ go_printf("%-4s|%3d|%.1f|%q|%v", "ab", 7, 2.25, "q", true) }}\n',
     'ab  |  7|2.2|"q"|true\n'),
    ('braces_in_text',
     'a {{"{{"}} b {% c %} {# d #} {\n',
     'a {{ "{{" }} b {{ "{" }}% c %} {{ "{" }}# d #} {\n',
     'a {{ b {% c %} {# d #} {\n'),
    ('go_values',
     '{{ $c := json (getv "/j") }}{{ $c.n }} {{ $c.big }} {{ $c.f }} {{ $c.none }} {{ $c.l }} {{ $c }}\n',
     '{% set c = go_json((getv("/j"))) %}{{ c.n | go_str }} {{ c.big | go_str }} {{ c.f | go_str }} {{ c["none"] | go_str }} {{ c.l | go_str }} {{ c | go_str }}\n',
     '8080 1e+06 0.5 <no value> [1 s <nil>] map[big:1e+06 f:0.5 l:[1 s <nil>] n:8080]\n'),
    ('pipeline',
     '{{ getv "/a" | printf "<%s>" }} {{ "x" | printf "%s%s" "y" }}\n',
     '{{ go_printf("<%s>", getv("/a")) }} {{ go_printf("%s%s", "y", "x") }}\n',
     '<x> yx\n'),
    ('method_chain',
     '{{ $k := get "/a" }}{{ $k.Key }}={{ $k.Value }}\n',
     '{% set k = get("/a") %}{{ k.key }}={{ k.value }}\n',
     '/a=x\n'),
]


@pytest.mark.parametrize("name, go, jinja, output", CASES, ids=[c[0] for c in CASES])
def test_construct(name: str, go: str, jinja: str, output: str) -> None:
    assert convert_template("t.tmpl", go) == jinja
    assert convert_and_render(go, DATA) == output


@pytest.fixture(scope="module")
def gotmpl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not go_available():
        pytest.skip("go is not installed: expected outputs are checked against confsync only")
    yield build_gotmpl(tmp_path_factory.mktemp("gotmpl"))


@pytest.mark.parametrize("name, go, output", [(c[0], c[1], c[3]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_expected_output_is_gos(name: str, go: str, output: str, gotmpl: Path) -> None:
    assert render_go(gotmpl, go, DATA) == output


REFUSALS = [
    ('a\n  {{ call .X }}\n', 2, 6, "call (refused"),
    ('{{ range getvs "/l/*" }}{{ break }}{{ end }}', 1, 25, "{{break}} (refused"),
    # Go 1.19 refuses {{break}}/{{continue}} outside a range when it parses the template, so
    # confd refuses the whole file even where the action never runs (measured with confd 0.17)
    ('{{ define "x" }}{{ break }}{{ end }}ok', 1, 17, "{{break}} outside {{range}}"),
    ('{{ define "x" }}\n{{ range ls "/" }}{{ end }}{{ continue }}{{ end }}ok', 2, 28,
     "{{continue}} outside {{range}}"),
    ('a\n{{ continue }}', 2, 1, "{{continue}} outside {{range}}"),
    ('{{ if false }}{{ break }}{{ end }}', 1, 15, "{{break}} outside {{range}}"),
    ('{{ range ls "/" }}{{ else }}{{ break }}{{ end }}', 1, 29, "{{break}} outside {{range}}"),
    ('{{ range ls "/" }}{{ block "b" . }}{{ continue }}{{ end }}{{ end }}', 1, 36,
     "{{continue}} outside {{range}}"),
    ('{{ range ls "/" }}{{ break 1 }}{{ end }}', 1, 19, 'unexpected "1" in {{break}}'),
    ('x\n\n{{ printf "%[1]s" "a" }}', 3, 4, "printf verb %[n]"),
    ('{{ printf "%p" "a" }}', 1, 4, "printf verb %p"),
    ('{{ nosuch "a" }}', 1, 4, "function 'nosuch' is not a confd function"),
    ('{{ .Key }}', 1, 4, "field .Key of confd's nil data"),
    # confd < 0.6 spelling (real deis templates): the refusal says what to write instead
    ('gzip {{ .deis_router_gzip }};', 1, 9,
     'to read a key write getv "/key" (confd before 0.6 gave keys as fields)'),
    ('{{ template "missing" }}', 1, 1, "template 'missing' is not defined"),
    ('{{ define "r" }}{{ template "r" }}{{ end }}{{ template "r" }}', 1, 17, "calls itself"),
    ('x\n{{ if true }}unclosed', 2, 1, "this {{if}} has no {{end}}"),
    ('{{ $undeclared }}', 1, 4, "undefined variable $undeclared"),
    ('{{ 1i }}', 1, 4, "complex numbers"),
    ('{{ js "x" }}', 1, 4, "js (refused"),
]


@pytest.mark.parametrize("go, line, col, message", REFUSALS, ids=[r[3] for r in REFUSALS])
def test_refusals_name_file_line_column_and_construct(go: str, line: int, col: int,
                                                      message: str) -> None:
    with pytest.raises(GoTemplateError) as caught:
        convert_template("templates/app.tmpl", go)
    assert (caught.value.line, caught.value.col) == (line, col), str(caught.value)
    assert str(caught.value).startswith(f"templates/app.tmpl:{line}:{col}: ")
    assert message in str(caught.value)


def test_converted_output_keeps_the_line_break_check() -> None:
    """A value with a newline printed by a converted template still fails the render."""
    from confsync.errors import ResourceError

    with pytest.raises(ResourceError, match="line break"):
        convert_and_render('{{ getv "/a" }}\n', {"/a": "x\nbind :22"})


def test_carriage_returns_in_text_survive() -> None:
    go = 'a\r\n{{ getv "/a" }}\r\n'
    assert convert_and_render(go, {"/a": "v"}) == "a\r\nv\r\n"


@pytest.mark.parametrize("go", ["{{ if 1 }}" * 3000 + "{{ end }}" * 3000,
                                "{{ range ls \"/\" }}" * 3000 + "{{ end }}" * 3000])
def test_nesting_too_deep_to_convert_is_a_refusal_not_a_recursion_error(go: str) -> None:
    # Found by fuzzing: a RecursionError traceback out of `confsync convert`.
    with pytest.raises(GoTemplateError, match=r"t\.tmpl:1:1: .*nested too deeply"):
        convert_template("t.tmpl", go)


# (Go template, what the render failure names): templates confd 0.17 (Go 1.19) fails to
# execute, measured with its binary; confsync must fail the render too, never print a value.
RENDER_FAILURES = [
    # confd executes templates with nil data: `$` (and `.` outside range/with) is nil
    ('{{ len $ }}', "len of untyped nil"),
    ('{{ len . }}', "len of untyped nil"),
    ('{{ $ | len }}', "len of untyped nil"),
    ('{{ len nil }}', "len of untyped nil"),
    ('{{ $x := $ }}{{ len $x }}', "len of untyped nil"),
    ('{{ len (index (json "{}") "missing") }}', "len of untyped nil"),
    ('{{ len (index (jsonArray "[null]") 0) }}', "len of untyped nil"),
    # Go's len takes strings, lists and maps only: a Python TypeError was the message
    ('{{ len 3 }}', r"error calling len: len of type int \(value 3\)"),
    ('{{ len -1.5 }}', r"error calling len: len of type float64 \(value -1.5\)"),
    ('{{ len true }}', r"error calling len: len of type bool \(value true\)"),
    ('{{ len (add 1 2) }}', r"len of type int \(value 3\)"),
    ('{{ len (index (jsonArray "[1e6]") 0) }}', r"len of type float64 \(value 1e\+06\)"),
    ('{{ $j := json (getv "/j") }}{{ len $j.n }}', r"len of type float64 \(value 8080\)"),
    ('{{ with $x := 1 }}{{ len $x }}{{ end }}', r"len of type int \(value 1\)"),
    ('{{ len (get "/a") }}', r"len of type memkv.KVPair \(value \{/a x\}\)"),
    ('{{ len datetime }}', r"len of type time.Time"),
]


@pytest.mark.parametrize("go, message", RENDER_FAILURES, ids=[r[0] for r in RENDER_FAILURES])
def test_render_fails_where_confd_fails(go: str, message: str) -> None:
    from confsync.errors import ResourceError

    with pytest.raises(ResourceError, match=message) as caught:
        convert_and_render(go, DATA)
    assert "TypeError" not in str(caught.value)
