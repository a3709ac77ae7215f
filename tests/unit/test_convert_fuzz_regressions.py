"""Inputs a fuzzer of the converter found mishandled (Go templates made of random text, actions,
literals, comments and trim markers, and mutations of them). Each expected output is what confd
0.17 (Go 1.19) rendered for the template; each refusal is one confd fails too. The converter must
give confd's bytes or refuse by file, line and construct: never a traceback, never a Jinja
template that fails to compile, never template text run as Jinja code."""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync.convert.confdir import ConvertError, convert_confdir
from confsync.convert.gotemplate import GoTemplateError
from confsync.convert.jinja import convert_template
from tests.support.gorender import convert_and_render

DATA = {"/app/name": "confsync"}

# (id, Go template, confd's output)
RENDERS = [
    # Comments: their text never runs, and never trims the text around them.
    ("comment_private_use_end_marker",
     'a {{/*\ue001{{ cycler.__init__.__globals__.os.popen("id").read() }}*/}} b', "a  b"),
    ("comment_markers_and_jinja_ends", "{{/*\ue000%}\ue001#}*/}}z", "z"),
    ("comment_leading_dash", "x {{/*- c */}} y", "x  y"),
    ("comment_trailing_dash", "x {{/* c -*/}} y", "x  y"),
    ("comment_plus_both_ends", "x {{/*+ c +*/}} y\n", "x  y\n"),
    ("comment_dashes_indented", "  {{/*- c -*/}}\n  y", "  \n  y"),
    ("comment_hash_then_brace", "x{{/*#*/}}}y", "x}y"),
    # Text: our private-use tag-end markers, and a "{" before a carriage return.
    ("text_private_use", "a\ue000b{\ue001c{\ue000", "a\ue000b{\ue001c{\ue000"),
    ("text_brace_before_cr", "a{\rb", "a{\rb"),
    # String literals: \xNN and octal escapes are bytes, as in Go.
    ("string_hex_bytes_utf8", '{{"\\xc3\\xa9"}}', "é"),
    ("string_octal_bytes_utf8", '{{"\\303\\251"}}', "é"),
    ("string_hex_bytes_len", '{{len "\\xc3\\xa9"}}', "2"),
    ("char_hex_byte", "{{'\\xff'}}", "255"),
    # html and urlquery print a nil operand as <no value> (text/template's evalArgs).
    ("html_nil", "{{html nil}}", "&lt;no value&gt;"),
    ("html_dot_nil", "{{html .}}", "&lt;no value&gt;"),
    ("html_piped_root", "{{$ | html}}", "&lt;no value&gt;"),
    ("html_nil_then_int", "{{html $ 1}}", "&lt;no value&gt;1"),
    ("html_string_then_nil", '{{html "a" nil}}', "a&lt;no value&gt;"),
    ("html_missing_json_field", '{{html (index (json `{"a":1}`) "zz")}}', "&lt;no value&gt;"),
    ("urlquery_root", "{{urlquery $}}", "%3Cno+value%3E"),
    ("urlquery_two_nils", "{{urlquery nil nil}}", "%3Cno+value%3E%3Cno+value%3E"),
    ("print_nil_unchanged", "{{print nil}}", "<nil>"),
    # Hex floats are Go number literals.
    ("hex_float_integral", "{{0x1P+4}}", "16"),
    ("hex_float_fraction", "{{0x1p-2}}", "0.25"),
    ("hex_float_mantissa_point", "{{0x1.8p1}}", "3"),
    ("hex_float_leading_point", "{{0x.8p1}}", "1"),
    ("hex_float_underscore", "{{0x_1p4}}", "16"),
    ("hex_float_negative", "{{-0x1p-2}}", "-0.25"),
    ("hex_float_int_param", "{{add 0x1p4 1}}", "17"),
    ("hex_float_big", "{{0x1p+4_0}}", "1.099511627776e+12"),
    ("float_underflow_is_zero", "{{1e-99999}}", "0"),
]


@pytest.mark.parametrize("go, expected", [(c[1], c[2]) for c in RENDERS],
                         ids=[c[0] for c in RENDERS])
def test_renders_as_confd_does(go: str, expected: str) -> None:
    assert convert_and_render(go, DATA) == expected


# (id, Go template, what the refusal names)
REFUSALS: list[tuple[str, str, str]] = [
    # String and character literals Go refuses (they were tracebacks in template names, or
    # converted with a wrong value).
    ("define_name_unknown_escape", '{{define "\\z"}}{{end}}', 'bad template name "\\z"'),
    ("template_name_short_hex", '{{template "\\x"}}', "\\x needs 2 hex digits"),
    ("block_name_past_unicode", '{{block "\\U00110000" .}}{{end}}', "not a valid code point"),
    ("string_short_hex", '{{"\\x4"}}', "\\x needs 2 hex digits"),
    ("string_short_u", '{{"\\u26"}}', "\\u needs 4 hex digits"),
    ("string_surrogate", '{{"\\ud800"}}', "not a valid code point"),
    ("char_surrogate", "{{'\\ud800'}}", "bad character literal"),
    ("string_octal_past_byte", '{{"\\400"}}', "at most \\377"),
    ("string_other_quote_escaped", '{{"\\\'"}}', "unknown escape"),
    ("string_not_utf8", '{{"\\xff"}}', "not UTF-8"),
    # Numbers past float64 (an OverflowError traceback for hex, `inf` emitted for decimal).
    ("hex_float_overflow", "{{0x1p1024}}", "number 0x1p1024 (refused: out of range"),
    ("float_overflow", "{{1e309}}", "number 1e309 (refused: out of range"),
    ("float_overflow_negative", "{{-1e309}}", "out of range"),
]


@pytest.mark.parametrize("go, message", [(c[1], c[2]) for c in REFUSALS],
                         ids=[c[0] for c in REFUSALS])
def test_refused_by_name_and_position(go: str, message: str) -> None:
    with pytest.raises(GoTemplateError) as caught:
        convert_template("t.tmpl", go)
    assert caught.value.filename == "t.tmpl" and caught.value.line >= 1
    assert message in caught.value.message


# (id, confd.toml, conf.d/r.toml, what the refusal names): values of a type confd does not take
# for the field were TypeError/ValueError tracebacks.
CONFDIRS = [
    ("resource_field_table", None, '[template]\nsrc = "t.tmpl"\nowner = {a = 1}\n',
     "r.toml: template.owner: cannot write {'a': 1}"),
    ("resource_field_date", None, '[template]\nsrc = "t.tmpl"\nkeys = 1979-05-27T07:32:00Z\n',
     "template.keys: cannot write datetime"),
    ("resource_command_table", None, '[template]\nsrc = "t.tmpl"\nreload_cmd = {a = 1}\n',
     "template.reload_cmd"),
    ("main_field_table", 'username = {a = 1}\n', '[template]\nsrc = "t.tmpl"\n',
     "confd.toml: username: cannot write {'a': 1}"),
    ("main_prefix_date", "prefix = 1979-05-27T07:32:00Z\n", '[template]\nsrc = "t.tmpl"\n',
     "confd.toml: prefix: cannot write datetime"),
    ("src_with_nul", None, '[template]\nsrc = "t\\u0000.tmpl"\n', "cannot read"),
]


@pytest.mark.parametrize("main, resource, message", [c[1:] for c in CONFDIRS],
                         ids=[c[0] for c in CONFDIRS])
def test_confdir_with_wrong_types_is_refused(main: str | None, resource: str, message: str,
                                              tmp_path: Path) -> None:
    old = tmp_path / "confd"
    (old / "conf.d").mkdir(parents=True)
    (old / "templates").mkdir()
    (old / "templates" / "t.tmpl").write_text('{{getv "/a"}}\n')
    (old / "conf.d" / "r.toml").write_text(resource)
    if main is not None:
        (old / "confd.toml").write_text(main)
    with pytest.raises(ConvertError) as caught:
        convert_confdir(old, tmp_path / "new")
    assert message in str(caught.value)
    assert not (tmp_path / "new").exists()
