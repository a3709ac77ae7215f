"""The corpus of the confd differential test (tests/support/confd_diff.py): case sets of small Go
templates over one data file each, generated systematically (every confd function, Go's
control flow, printf verbs, comparisons of mixed types, hostile data).

Case names are file names (confd names resources by them); templates never touch the network
or the clock (no lookupIP/lookupSRV/datetime) and read no environment variable that is set.
"""

from __future__ import annotations

import itertools


def yaml_string(text: str) -> str:
    """`text` as a YAML double-quoted scalar that both Go's yaml.v2 and PyYAML read back
    exactly (escapes for everything outside printable ASCII that YAML may not hold raw)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif code in (0x2028, 0x2029, 0xFEFF):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def flat_yaml(data: dict[str, str]) -> str:
    """Flat `/a/b` keys at the top level: confd's file backend path.Join's them as they are."""
    return "".join(f"{yaml_string(k)}: {yaml_string(v)}\n" for k, v in data.items())


MAIN = {
    "/app/name": "confsync",
    "/app/port": "8080",
    "/app/empty": "",
    "/app/neg": "-7",
    "/app/float": "3.25",
    "/app/bool": "true",
    "/app/spaces": "  padded  ",
    "/app/nl": "line1\nline2\n",
    "/app/crlf": "a\r\nb",
    "/app/tab": "a\tb",
    "/app/uni": "héllo wörld ☃ 😀",
    "/app/upper": "straße İstanbul ΣΑΣ ﬁx ǅ ᾳ ŉ",
    "/app/quote": "say \"hi\" & <b>'x'</b>\\",
    "/app/ctrl": "bell\x07del\x7fnul-free",
    "/app/json": '{"a":1,"b":"two","c":[1,2.5,"x"],"d":{"e":null,"f":true},'
                 '"big":1e21,"small":0.000001,"int":12345678,"neg":-0.5,"s":"a b"}',
    "/app/jsonarr": '[3,"a",{"k":"v"},null,true,1.5]',
    "/app/jsonstrs": '["b","a","c"]',
    "/app/jsonnull": "null",
    "/app/jsonnan": '{"a":NaN}',
    "/app/jsonhuge": '{"a":1e400}',
    "/app/jsondup": '{"a":1,"a":2}',
    "/app/csv": "b,a,,c",
    "/app/b64": "aGVsbG8gd29ybGQ=",
    "/app/b64nl": "aGVsbG8g\nd29ybGQ=",
    "/app/b64bad": "not base64!",
    "/app/b64nopad": "aGVsbG8",
    "/app/path": "/usr/local/lib/",
    "/app/num08": "08",
    "/app/plus": "+5",
    "/app/big": "9223372036854775807",
    "/hosts/web1": "10.0.0.1",
    "/hosts/web2": "10.0.0.2",
    "/hosts/db-1": "10.0.0.3",
    "/hosts/a.b": "10.0.0.4",
    "/hosts/with space": "10.0.0.5",
    "/nested/x/y/z": "deep",
    "/nested/x/y2": "y2",
    "/nested/x/leaf": "leaf",
    "/nested/top": "t",
    "/num/1": "10",
    "/num/2": "9",
    "/num/10": "100",
    "/len/a": "ccc",
    "/len/b": "a",
    "/len/c": "bb",
    "/len/d": "dd",
    "/len/e": "e",
    "/top": "top",
    "/u/ü": "umlaut key",
    "/dash-key/sub_key": "x",
}
# 20 values of one length and a few others: sortByLength's ordering of equals (Go's sort.Sort
# is not stable past 12 items).
MAIN.update({f"/same/{i:02d}": f"v{i:02d}" for i in range(20)})
MAIN.update({f"/same/x{i}": "w" * (i % 4 + 1) for i in range(8)})

# ---- functions ------------------------------------------------------------------------------

FUNCTIONS: dict[str, str] = {
    # key-value functions
    "getv": '{{getv "/app/name"}}',
    "getv_default_missing": '{{getv "/nope" "dflt"}}',
    "getv_default_present": '{{getv "/app/empty" "dflt"}}',
    "getv_missing": '{{getv "/nope"}}',
    "getv_no_slash": '{{getv "app/name"}}',
    "getv_trailing_slash": '{{getv "/app/name/"}}',
    "getv_double_slash": '{{getv "/app//name"}}',
    "getv_space_key": '{{getv "/hosts/with space"}}',
    "getv_unicode_key": '{{getv "/u/ü"}}',
    "getv_nl": '[{{getv "/app/nl"}}]',
    "getv_crlf": '[{{getv "/app/crlf"}}]',
    "getv_ctrl": '[{{getv "/app/ctrl"}}]',
    "getv_dir": '{{getv "/nested"}}',
    "get": '{{get "/app/name"}}',
    "get_fields": '{{with get "/app/port"}}{{.Key}}={{.Value}}{{end}}',
    "get_missing": '{{get "/nope"}}',
    "gets": '{{range gets "/hosts/*"}}{{.Key}}={{.Value}};{{end}}',
    "gets_print": '{{gets "/num/*"}}',
    "gets_none": '{{gets "/nothing/*"}}|{{len (gets "/nothing/*")}}',
    "gets_no_slash": '{{len (gets "hosts/*")}}',
    "gets_class": '{{range gets "/hosts/web[12]"}}{{.Value}} {{end}}',
    "gets_negclass": '{{range gets "/hosts/web[^1]"}}{{.Value}} {{end}}',
    "gets_question": '{{range gets "/num/?"}}{{.Key}} {{end}}',
    "gets_deep_star": '{{range gets "/nested/*"}}{{.Key}} {{end}}',
    "gets_bad_pattern": '{{gets "/hosts/[a"}}',
    "getvs": '{{getvs "/num/*"}}',
    "getvs_range": '{{range getvs "/hosts/*"}}{{.}},{{end}}',
    "getvs_bad_pattern": '{{getvs "/hosts/["}}',
    "exists_yes": '{{exists "/app/name"}}',
    "exists_no": '{{exists "/nope"}}',
    "exists_dir": '{{exists "/nested"}}',
    "exists_no_slash": '{{exists "app/name"}}',
    "ls_root": '{{ls "/"}}',
    "ls_nested": '{{ls "/nested"}}',
    "ls_nested_slash": '{{ls "/nested/"}}',
    "ls_nested_x": '{{ls "/nested/x"}}',
    "ls_leaf": '{{ls "/app/name"}}',
    "ls_missing": '{{ls "/nope"}}',
    "ls_partial": '{{ls "/nest"}}',
    "lsdir_root": '{{lsdir "/"}}',
    "lsdir_nested": '{{lsdir "/nested"}}',
    "lsdir_nested_x": '{{lsdir "/nested/x"}}',
    "lsdir_leaf": '{{lsdir "/app/name"}}',
    "lsdir_partial": '{{lsdir "/nest"}}',
    # json
    "json_print": '{{json (getv "/app/json")}}',
    "json_fields": '{{with json (getv "/app/json")}}{{.a}} {{.b}} {{.c}} {{.d}} {{.big}} '
                   '{{.small}} {{.int}} {{.neg}} {{.missing}} {{.s}}{{end}}',
    "json_nested": '{{$j := json (getv "/app/json")}}{{$j.d.f}} {{$j.d.e}} {{index $j "c" 1}}',
    "json_range": '{{range $k, $v := json (getv "/app/json")}}{{$k}}={{$v}};{{end}}',
    "json_null": '{{json (getv "/app/jsonnull")}}',
    "json_null_range": '{{range $k, $v := json (getv "/app/jsonnull")}}x{{else}}empty{{end}}',
    "json_nan": '{{json (getv "/app/jsonnan")}}',
    "json_huge": '{{json (getv "/app/jsonhuge")}}',
    "json_dup": '{{json (getv "/app/jsondup")}}',
    "json_array_as_object": '{{json (getv "/app/jsonarr")}}',
    "json_bad": '{{json (getv "/app/name")}}',
    "json_literal_ws": '{{json " { \\"a\\" : \\"b\\" } "}}',
    "jsonArray": '{{jsonArray (getv "/app/jsonarr")}}',
    "jsonArray_range": '{{range $i, $v := jsonArray (getv "/app/jsonarr")}}{{$i}}:{{$v}} {{end}}',
    "jsonArray_null": '{{jsonArray (getv "/app/jsonnull")}}',
    "jsonArray_object": '{{jsonArray (getv "/app/json")}}',
    "jsonArray_index": '{{index (jsonArray (getv "/app/jsonarr")) 2}}',
    # strings
    "split": '{{split (getv "/app/csv") ","}}',
    "split_len": '{{len (split (getv "/app/csv") ",")}}',
    "split_empty_sep": '{{split "aé☃" ""}}',
    "split_empty_text": '{{split "" ","}}|{{len (split "" ",")}}',
    "split_index": '{{index (split (getv "/app/csv") ",") 3}}',
    "join": '{{join (split (getv "/app/csv") ",") "+"}}',
    "join_getvs": '{{join (getvs "/hosts/*") " "}}',
    "join_jsonarray_strs": '{{join (jsonArray (getv "/app/jsonstrs")) ","}}',
    "join_seq": '{{join (seq 1 3) ","}}',
    "toUpper": '{{toUpper (getv "/app/uni")}}',
    "toUpper_special": '{{toUpper (getv "/app/upper")}}',
    "toLower_special": '{{toLower (getv "/app/upper")}}',
    "toLower": '{{toLower "MiXeD ÀÉ"}}',
    "contains_yes": '{{contains (getv "/app/name") "sync"}}',
    "contains_empty": '{{contains "abc" ""}}',
    "replace_all": '{{replace "a.b.c" "." "-" -1}}',
    "replace_one": '{{replace "a.b.c" "." "-" 1}}',
    "replace_zero": '{{replace "a.b.c" "." "-" 0}}',
    "replace_empty_old": '{{replace "abc" "" "-" -1}}',
    "replace_empty_old_2": '{{replace "abc" "" "-" 2}}',
    "trimSuffix": '{{trimSuffix "file.conf" ".conf"}}|{{trimSuffix "file" ".conf"}}',
    "base": '{{base (getv "/app/path")}}|{{base ""}}|{{base "/"}}|{{base "a"}}|{{base "//"}}',
    "dir": '{{dir (getv "/app/path")}}|{{dir ""}}|{{dir "/"}}|{{dir "a"}}|{{dir "a/b/../c"}}'
           '|{{dir "//a"}}|{{dir "./x"}}',
    "map": '{{map "b" 1 "a" "x" "c" true}}',
    "map_index": '{{$m := map "k" "v" "n" 2}}{{index $m "k"}} {{$m.n}} {{index $m "nope"}}',
    "map_odd": '{{map "k"}}',
    "map_nonstring_key": '{{map 1 2}}',
    "map_range": '{{range $k, $v := map "z" 1 "a" 2}}{{$k}}{{$v}}{{end}}',
    "getenv_default": '{{getenv "CONFSYNC_DIFF_SURELY_UNSET" "dflt"}}|'
                      '{{getenv "CONFSYNC_DIFF_SURELY_UNSET"}}|',
    "printf_basic": '{{printf "%s:%d" (getv "/app/name") 8080}}',
    # numbers
    "add": '{{add 1 2}} {{sub 1 2}} {{mul 3 4}} {{div 7 2}} {{mod 7 2}}',
    "div_neg": '{{div -7 2}} {{mod -7 2}} {{div 7 -2}} {{mod 7 -2}}',
    "div_zero": '{{div 1 0}}',
    "mod_zero": '{{mod 1 0}}',
    "add_overflow": '{{add 9223372036854775807 1}}',
    "mul_overflow": '{{mul 9223372036854775807 2}}',
    "sub_overflow": '{{sub -9223372036854775807 2}}',
    "div_minint": '{{div (sub -9223372036854775807 1) -1}}',
    "add_string": '{{add 1 "2"}}',
    "add_float": '{{add 1 1.5}}',
    "add_atoi": '{{add (atoi (getv "/app/port")) 1}}',
    "atoi": '{{atoi (getv "/app/num08")}} {{atoi (getv "/app/plus")}} {{atoi "-0"}}',
    "atoi_big": '{{atoi (getv "/app/big")}}',
    "atoi_overflow": '{{atoi "9223372036854775808"}}',
    "atoi_space": '{{atoi " 1"}}',
    "atoi_empty": '{{atoi ""}}',
    "atoi_float": '{{atoi (getv "/app/float")}}',
    "seq": '{{seq 1 5}}',
    "seq_empty": '{{seq 5 3}}|{{len (seq 5 3)}}',
    "seq_one": '{{seq 2 2}}',
    "seq_range": '{{range $i, $n := seq 3 6}}{{$i}}-{{$n}} {{end}}',
    "seq_large": '{{len (seq 1 100000)}}',
    "parseBool": '{{parseBool "t"}} {{parseBool "FALSE"}} {{parseBool "1"}} {{parseBool "True"}}',
    "parseBool_bad": '{{parseBool "yes"}}',
    "parseBool_tRUE": '{{parseBool "tRUE"}}',
    # lists
    "reverse_getvs": '{{reverse (getvs "/hosts/*")}}',
    "reverse_gets": '{{range reverse (gets "/num/*")}}{{.Key}} {{end}}',
    "reverse_split": '{{reverse (split "a,b,c" ",")}}',
    "reverse_seq": '{{reverse (seq 1 4)}}',
    "reverse_jsonarray": '{{reverse (jsonArray (getv "/app/jsonstrs"))}}',
    "reverse_in_place": '{{$l := getvs "/num/*"}}{{$r := reverse $l}}{{$l}} {{$r}}',
    "reverse_string": '{{reverse "abc"}}',
    "sortByLength": '{{sortByLength (getvs "/len/*")}}',
    "sortByLength_many": '{{sortByLength (getvs "/same/*")}}',
    "sortByLength_seq": '{{sortByLength (seq 1 3)}}',
    "sortKVByLength": '{{range sortKVByLength (gets "/hosts/*")}}{{.Key}} {{end}}',
    "sortKVByLength_many": '{{range sortKVByLength (gets "/same/*")}}{{base .Key}} {{end}}',
    # base64
    "base64Encode": '{{base64Encode (getv "/app/uni")}}|{{base64Encode ""}}',
    "base64Decode": '{{base64Decode (getv "/app/b64")}}',
    "base64Decode_newline": '{{base64Decode (getv "/app/b64nl")}}',
    "base64Decode_bad": '{{base64Decode (getv "/app/b64bad")}}',
    "base64Decode_nopad": '{{base64Decode (getv "/app/b64nopad")}}',
    "base64Decode_crlf": '{{base64Decode "aGVs\\r\\nbG8="}}',
    "base64_roundtrip": '{{base64Decode (base64Encode (getv "/app/nl"))}}',
    # text/template builtins
    "len_str": '{{len (getv "/app/uni")}}',
    "len_map": '{{len (json (getv "/app/json"))}}',
    "len_int": '{{len 3}}',
    "index_str": '{{index (getv "/app/name") 0}}',
    "index_out_of_range": '{{index (getvs "/num/*") 9}}',
    "index_nested": '{{index (json (getv "/app/json")) "d" "f"}}',
    "index_float_key": '{{index (jsonArray (getv "/app/jsonarr")) 1.0}}',
    "index_no_keys": '{{index (getvs "/num/*")}}',
    "print": '{{print 1 2}}|{{print "a" 1}}|{{print 1 "a"}}|{{print "a" "b"}}|{{print true 1}}'
             '|{{print nil}}|{{print}}',
    "print_list": '{{print (getvs "/num/*") (seq 1 2)}}',
    "println": '{{println "a" 1 2}}{{println}}x',
    "html": '{{html (getv "/app/quote")}}|{{html 1 "<" 2}}',
    "urlquery": '{{urlquery (getv "/app/quote")}}|{{urlquery "a b/c?d=é~_.-"}}',
    "urlquery_multi": '{{urlquery 1 "a" 2}}',
    "js": '{{js (getv "/app/quote")}}',
    "not": '{{not true}} {{not ""}} {{not "x"}} {{not 0}} {{not (getvs "/nope/*")}}',
    "and_or": '{{and 1 0}} {{and 1 2}} {{or 0 ""}} {{or "" "x"}} {{and "a" nil}} {{or nil 0}}',
    "and_short_circuit": '{{and false (getv "/nope")}}|{{or true (getv "/nope")}}',
    "slice": '{{slice "abc" 1 2}}',
    "call": '{{call 1}}',
}

# ---- printf: every verb over values of every type ---------------------------------------------

PRINTF_VALUES = {
    "str": '"go"',
    "emptystr": '""',
    "nlstr": '(getv "/app/nl")',
    "unistr": '(getv "/app/uni")',
    "ctrlstr": '(getv "/app/ctrl")',
    "int": "42",
    "negint": "-42",
    "zero": "0",
    "float": "3.14159",
    "bigfloat": "1e21",
    "jsonint": '(index (json (getv "/app/json")) "a")',
    "jsonfloat": '(index (json (getv "/app/json")) "neg")',
    "bool": "true",
    "nil": "nil",
    "list": '(getvs "/num/*")',
    "kvlist": '(gets "/num/*")',
    "kv": '(get "/top")',
    "map": '(json (getv "/app/json"))',
    "intlist": "(seq 1 3)",
    "missing": '(index (json (getv "/app/json")) "missing")',
}
PRINTF_VERBS = ["%s", "%d", "%v", "%q", "%x", "%X", "%5.2f", "%-10s|", "%10s|", "%05d",
                "%+d", "%e", "%g", "%t", "%c", "%o", "%b", "%.3s", "%8.3f", "%-6d|", "%6v|",
                "%+v", "%x", "% d", "%#x", "%.0f", "%G", "%E", "%.2e", "%U", "%T", "%#v",
                "%+q", "%#q", "%08.3f", "%-08d|", "%.1g", "%3c|", "%5t|"]

PRINTF: dict[str, str] = {}
for (vname, value), verb in itertools.product(PRINTF_VALUES.items(), PRINTF_VERBS):
    tag = (verb.replace("%", "").replace("|", "").replace(".", "p").replace("-", "m")
           .replace("+", "plus").replace(" ", "sp").replace("#", "hash") or "pct")
    PRINTF[f"pf_{tag}_{vname}"] = f'{{{{printf "{verb}" {value}}}}}'
PRINTF.update({
    "pf_missing_arg": '{{printf "%s %s" "a"}}',
    "pf_extra_arg": '{{printf "%s" "a" "b" 1}}',
    "pf_percent": '{{printf "100%%"}}',
    "pf_no_verb": '{{printf "plain"}}',
    "pf_trailing_pct": '{{printf "x%"}}',
    "pf_star": '{{printf "%*d" 5 1}}',
    "pf_argindex": '{{printf "%[2]s %[1]s" "a" "b"}}',
    "pf_pipe": '{{"a" | printf "%s-%s" "b"}}',
    "pf_var": '{{$f := "%s!"}}{{printf $f "x"}}',
    "pf_width_unicode": '{{printf "%-8s|" "é☃"}}',
    "pf_prec_unicode": '{{printf "%.2s" "é☃x"}}',
    "pf_q_unicode": '{{printf "%q" "é\\u00a0\\u200b😀"}}',
    "pf_x_unicode": '{{printf "% x" "é"}}',
})

# ---- comparisons of every pair of kinds --------------------------------------------------------

OPERANDS = {
    "int": "1",
    "int2": "2",
    "float": "1.0",
    "str": '"1"',
    "strb": '"b"',
    "bool": "true",
    "getv": '(getv "/app/port")',
    "atoi": '(atoi (getv "/app/port"))',
    "jsonnum": '(index (json (getv "/app/json")) "a")',
    "jsonmissing": '(index (json (getv "/app/json")) "missing")',
    "list": '(getvs "/num/*")',
    "kv": '(get "/top")',
}
COMPARISONS: dict[str, str] = {}
for op in ("eq", "ne", "lt", "le", "gt", "ge"):
    for (an, a), (bn, b) in itertools.product(OPERANDS.items(), repeat=2):
        if op in ("eq", "lt") or an == bn or {an, bn} <= {"int", "int2", "float", "str"}:
            COMPARISONS[f"cmp_{op}_{an}_{bn}"] = f"{{{{{op} {a} {b}}}}}"
COMPARISONS.update({
    "cmp_eq_multi": '{{eq "b" "a" "b"}} {{eq 1 2 3}}',
    "cmp_eq_multi_mixed": '{{eq 1 2 "x"}}',
    "cmp_eq_one": '{{eq 1}}',
    "cmp_eq_nil": '{{eq nil nil}}',
    "cmp_lt_str_unicode": '{{lt "z" "é"}} {{lt "Z" "a"}} {{lt "" "a"}}',
    "cmp_eq_value_in_range": '{{range gets "/num/*"}}{{if eq .Value "9"}}nine{{end}}{{end}}',
    "cmp_lt_bool": '{{lt true false}}',
    "cmp_neg_float": '{{lt -0.5 0}}',
})

# ---- control flow, variables, whitespace --------------------------------------------------------

CONTROL: dict[str, str] = {
    "range_i_v": '{{range $i, $v := getvs "/num/*"}}{{$i}}={{$v}} {{end}}',
    "range_else": '{{range getvs "/nope/*"}}x{{else}}none{{end}}',
    "range_map_sorted": '{{range $k, $v := json (getv "/app/json")}}{{$k}} {{end}}',
    "range_map_values": '{{range json (getv "/app/json")}}{{.}};{{end}}',
    "range_one_var": '{{range $v := getvs "/num/*"}}{{$v}}{{end}}',
    "range_string": '{{range "abc"}}{{.}}{{end}}',
    "range_int": '{{range 3}}{{.}}{{end}}',
    "range_nil": '{{range nil}}x{{end}}',
    "range_dollar": '{{range getvs "/num/*"}}{{$}}{{end}}',
    "range_nested": '{{range $a := seq 1 2}}{{range $b := seq 1 2}}{{$a}}{{$b}} {{end}}{{end}}',
    "range_break": '{{range seq 1 5}}{{if eq . 3}}{{break}}{{end}}{{.}}{{end}}',
    "range_continue": '{{range seq 1 5}}{{if eq . 3}}{{continue}}{{end}}{{.}}{{end}}',
    "range_assign_outer": '{{$n := 0}}{{range seq 1 4}}{{$n = add $n .}}{{end}}{{$n}}',
    "range_var_scope": '{{$x := "out"}}{{range seq 1 2}}{{$x := .}}{{$x}}{{end}}{{$x}}',
    "if_else_if": '{{if eq 1 2}}a{{else if eq 1 1}}b{{else}}c{{end}}',
    "if_empty_list": '{{if getvs "/nope/*"}}y{{else}}n{{end}}',
    "if_empty_map": '{{if json "{}"}}y{{else}}n{{end}}',
    "if_zero_float": '{{if 0.0}}y{{else}}n{{end}}',
    "if_kv": '{{if get "/app/empty"}}y{{else}}n{{end}}',
    "if_decl": '{{if $x := getv "/app/name"}}{{$x}}{{end}}',
    "if_assign_scope": '{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}',
    "if_shadow": '{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}',
    "with": '{{with getv "/app/name"}}[{{.}}]{{end}}',
    "with_empty": '{{with getv "/app/empty"}}[{{.}}]{{else}}empty{{end}}',
    "with_decl": '{{with $v := getv "/app/port"}}{{$v}}{{.}}{{end}}',
    "with_else_with": '{{with ""}}a{{else with "b"}}{{.}}{{end}}',
    "with_nil": '{{with nil}}a{{else}}b{{end}}',
    "dot_top": '{{.}}',
    "dot_field_top": '{{.Key}}',
    "var_root": '{{$}}',
    "pipeline_chain": '{{getv "/app/name" | toUpper | printf "%s!"}}',
    "paren_field": '{{(get "/top").Value}}',
    "paren_pipe": '{{(getv "/app/name" | toUpper)}}',
    "comment": 'a{{/* comment */}}b',
    "comment_trim": 'a  {{- /* c */ -}}  b',
    "trim": 'a \n {{- "x" -}} \n b',
    "trim_left_only": 'a \n {{- "x"}} \n b',
    "trim_tab": "a\t{{-\t\"x\"\t-}}\tb",
    "trim_number": '{{3 -}} {{- -3}}',
    "define_template": '{{define "t"}}<{{.}}>{{end}}{{template "t" "x"}}{{template "t" 1}}',
    "define_no_arg": '{{define "t"}}<{{.}}>{{end}}{{template "t"}}',
    "define_vars": '{{define "t"}}{{$x := 1}}{{$x}}{{end}}{{$x := 2}}{{template "t"}}{{$x}}',
    "block": '{{block "b" "v"}}[{{.}}]{{end}}',
    "template_undefined": '{{template "nope"}}',
    "nested_define_use_function": '{{define "h"}}{{getv .}}{{end}}{{template "h" "/top"}}',
    "text_braces": 'a { b } {{"{{"}} }} c',
    "text_percent_hash": '{% x %} {# y #} ${z}',
    "crlf_text": 'a\r\nb{{"x"}}\r\n',
    "no_trailing_nl": 'x{{"y"}}',
    "trailing_nl": 'x{{"y"}}\n\n',
    "literal_numbers": '{{1e3}} {{0x10}} {{1_000}} {{010}} {{0o10}} {{0b11}} {{1.0}} {{-0}} '
                       "{{'a'}} {{1.5e-7}} {{.5}}",
    "literal_strings": '{{"a\\tb\\u00e9\\x41"}}|{{`raw\\n`}}',
    "literal_big": '{{99999999999999999999}}',
    "literal_uint": '{{18446744073709551615}}',
    "literal_complex": '{{1i}}',
    "nil_action": '{{nil}}',
    "unclosed": '{{if true}}x',
    "unknown_func": '{{nosuchfunc 1}}',
    "bad_syntax": '{{getv "/a" |}}',
    "undefined_var": '{{$nope}}',
    "too_deep_field": '{{$m := map "a" "x"}}{{$m.a.b}}',
    "field_of_string": '{{with getv "/top"}}{{.Foo}}{{end}}',
    "method_on_map_field": '{{$j := json (getv "/app/json")}}{{$j.d}}',
    "kv_missing_field": '{{with get "/top"}}{{.Nope}}{{end}}',
    "lots_of_output": '{{range seq 1 2000}}{{.}},{{end}}',
}

# ---- hostile data: keys and values ---------------------------------------------------------------

HOSTILE = {
    "/h/empty": "",
    "/h/spaces only": "   ",
    "/h/nl": "\n",
    "/h/multi": "a\nb\nc",
    "/h/trailing-ws": "x \t ",
    "/h/dots.in.key": "dots",
    "/h/under_score": "us",
    "/h/UPPER": "upper",
    "/h/012": "numeric key",
    "/h/0.5": "zero five",
    "/h/1e3": "1e3",
    "/h/true": "yes",
    "/h/emoji😀": "😀",
    "/h/quote\"key": "q",
    "/h/tab\tkey": "t",
    "/h/percent%s": "%d %s %%",
    "/h/braces": "{{ not a template }}",
    "/h/jinja": "{% if x %}{# c #}",
    "/h/backslash": "C:\\path\\n",
    "/h/nbsp": "a\u00a0b\u2028c",
    "/h/rtl": "שלום",
    "/h/numlike": "007",
    "/h/float-like": "1e5",
    "/h/negzero": "-0",
    "/deep/a/b/c/d/e/f/g/h/i/j/k": "deep",
    "/deep/a/b/c/d/e/f/g/h/i/j/l": "deep2",
}
HOSTILE.update({f"/many/k{i:04d}": f"value-{i}" for i in range(1500)})

HOSTILE_CASES: dict[str, str] = {
    "all_pairs": '{{range gets "/h/*"}}{{.Key}}=[{{.Value}}]\n{{end}}',
    "all_values": '{{range getvs "/h/*"}}[{{.}}]{{end}}',
    "ls_h": '{{range ls "/h"}}{{.}}|{{end}}',
    "lsdir_deep": '{{lsdir "/deep/a/b"}} {{ls "/deep/a/b/c/d/e/f/g/h/i/j"}}',
    "deep_get": '{{getv "/deep/a/b/c/d/e/f/g/h/i/j/k"}}',
    "many_count": '{{len (gets "/many/*")}} {{len (ls "/many")}}',
    "many_join": '{{join (getvs "/many/*") ","}}',
    "many_last": '{{$l := gets "/many/*"}}{{(index $l 1499).Value}}',
    "many_sort": '{{range sortKVByLength (gets "/many/*")}}{{.Value}} {{end}}',
    "many_sortbylength": '{{sortByLength (getvs "/many/*")}}',
    "printf_values": '{{range getvs "/h/*"}}{{printf "%q %v %s %x|" . . . .}}{{end}}',
    "html_values": '{{range getvs "/h/*"}}{{html .}}|{{end}}',
    "urlquery_values": '{{range getvs "/h/*"}}{{urlquery .}}|{{end}}',
    "upper_values": '{{range getvs "/h/*"}}{{toUpper .}}|{{toLower .}}|{{end}}',
    "len_values": '{{range getvs "/h/*"}}{{len .}},{{end}}',
    "base_keys": '{{range gets "/h/*"}}{{base .Key}}|{{dir .Key}}|{{end}}',
    "split_values": '{{range getvs "/h/*"}}{{split . "\\n"}}{{end}}',
    "b64_values": '{{range getvs "/h/*"}}{{base64Encode .}}|{{end}}',
    "atoi_numlike": '{{atoi (getv "/h/numlike")}} {{atoi (getv "/h/negzero")}}',
    "json_key_with_quote": '{{getv "/h/quote\\"key"}}',
    "getv_percent_key": '{{getv "/h/percent%s"}}',
    "printf_data_format": '{{printf (getv "/h/percent%s") 1 "a"}}',
    "gets_escape": '{{range gets "/h/percent\\\\%s"}}{{.Value}}{{end}}',
}

# ---- a mixed round: what real templates combine ------------------------------------------

MIXED: dict[str, str] = {
    "mixed_1": '{{range $i, $c := split "a,b,c" ","}}{{if $i}},{{end}}{{$c}}{{end}}',
    "mixed_2": '{{$x := 1}}{{$x = "s"}}{{$x}}',
    "mixed_3": '{{len ""}} {{index "ab" 1}}',
    "mixed_4": '{{and (exists "/top") (getv "/top")}}|{{or (exists "/nope") "d"}}',
    "mixed_5": '{{- if true -}}\n x \n{{- end -}}\n',
    "mixed_6": '{{print (json "{}")}} {{json "{}"}}',
    "mixed_7": '{{printf "%d" (len (gets "/num/*"))}} {{add (len "abc") 1}}',
    "mixed_8": '{{mul (atoi "3") 2.0}}',
    "mixed_9": '{{seq 1 (atoi "3")}}',
    "mixed_10": '{{base64Decode "////"}}',
    "mixed_11": '{{index (json (getv "/app/json")) "c"}}',
    "mixed_12": '{{range $k, $v := json (getv "/app/json")}}{{if eq $k "a"}}{{$v}}{{end}}{{end}}',
    "mixed_13": '{{range json (getv "/app/json")}}{{printf "%T" .}}{{end}}',
    "mixed_14": '{{with $j := json (getv "/app/json")}}{{$j.b}}{{end}}',
    "mixed_15": '{{$j := json (getv "/app/json")}}{{if $j.d.f}}yes{{end}}{{if $j.missing}}m{{else}}nm{{end}}',
    "mixed_16": '{{(index (gets "/num/*") 0).Key}}',
    "mixed_17": '{{range gets "/num/*"}}{{printf "%-8s=%5s;" .Key .Value}}{{end}}',
    "mixed_18": '{{$l := getvs "/num/*"}}{{index $l (sub (len $l) 1)}}',
    "mixed_19": '{{contains (getv "/app/uni") "☃"}} {{replace (getv "/app/uni") "ö" "o" -1}}',
    "mixed_20": '{{printf "%s" (json (getv "/app/jsonarr"))}}',
    "mixed_21": '{{jsonArray "[1, 2]" | len}}',
    "mixed_22": '{{html (json (getv "/app/jsonarr"))}} {{urlquery (seq 1 2)}}',
    "mixed_23": '{{ "x" | printf "%q" }}{{ 1 | add 2 }}',
    "mixed_24": '{{range $i, $e := getvs "/hosts/*"}}{{if gt $i 2}}{{break}}{{end}}{{end}}x',
    "mixed_25": '{{$v := index (jsonArray "[1.5, \\"2\\"]") 0}}{{$v}} {{printf "%.1f" $v}} {{printf "%d" $v}}',
    "mixed_26": '{{eq (index (jsonArray "[\\"a\\"]") 0) "a"}}',
    "mixed_27": '{{lt (len (getvs "/num/*")) 5}} {{eq (len "ab") 2}}',
    "mixed_28": '{{ne (getv "/app/port") "80"}} {{eq .  nil}}',
    "mixed_29": '{{index (map "a" (seq 1 3)) "a" 1}}',
    "mixed_30": '{{println (getv "/top") 1}}{{print "a" nil "b"}}',
    "mixed_31": '{{ datetime | printf "%T" }}',
    "mixed_32": '{{range $i, $x := seq 1 3}}{{$i}}{{end}}{{range $x := json "{\\"b\\":1,\\"a\\":2}"}}{{$x}}{{end}}',
    "mixed_33": '{{getv "/app/float" | printf "%v"}} {{printf "%v" 3.0}} {{3.0}} {{printf "%v" 1e6}} {{1e6}} {{0.1}}',
    "mixed_34": '{{printf "%5.1q|%-5q|%05s" "abc" "é" "x"}}',
    "mixed_35": '{{printf "%x %X %o %b %c" 255 255 8 5 9731}}',
    "mixed_36": '{{printf "%08.3f|%-8.2f|%+.1e|% .2f" 3.14159 2.5 12345.678 1.0}}',
    "mixed_37": '{{printf "%v %v" (index (json (getv "/app/json")) "int") (index (json (getv "/app/json")) "small")}}',
    "mixed_38": '{{toUpper (getv "/app/quote")}} {{toLower "ǅ"}}',
    "mixed_39": '{{split "a.b" "."}} {{split "a" "a"}} {{split "aaa" "aa"}}',
    "mixed_40": '{{dir "/a/b/"}} {{base "/a/b/"}} {{dir "a"}}',
}

# ---- YAML scalars: how each side's file backend turns them into text -------------------------------

YAML_DATA = """\
app:
  int: 8080
  float: 1.5
  float_int: 1.0
  float_exp: 1e20
  float_small: 0.0001
  octal: 0755
  hex: 0x1F
  bool_yes: yes
  bool_true: true
  bool_on: on
  null_value: null
  tilde: ~
  empty:
  date: 2001-12-14
  string: "quoted"
  plain: plain text
  neg: -3
  list: [a, 1, true]
  nested:
    k: v
  bool_y: y
  bool_N: N
  octal_o: 0o17
  dec_08: 08
  dec_0999: 0999
  sexagesimal: 1:20
  timestamp: 2001-12-14t21:59:43.10-05:00
  int64_max: 9223372036854775807
  uint64: 9223372036854775808
  uint64_max: 18446744073709551615
  beyond_uint64: 18446744073709551616
  neg_beyond_int64: -9223372036854775809
  dot_underscore: .5_0
  float_overflow: 1e400
  binary_plus: 0b+101
  equals: =
"""
YAML_CASES: dict[str, str] = {
    name: f'{{{{getv "/app/{name}" "<absent>"}}}}'
    for name in ("int", "float", "float_int", "float_exp", "float_small", "octal", "hex",
                 "bool_yes", "bool_true", "bool_on", "null_value", "tilde", "empty", "date",
                 "string", "plain", "neg",
                 # yaml.v2's resolution, not PyYAML's (YAML 1.1 words, Go's number syntax)
                 "bool_y", "bool_N", "octal_o", "dec_08", "dec_0999", "sexagesimal", "timestamp",
                 "int64_max", "uint64", "uint64_max", "beyond_uint64", "neg_beyond_int64",
                 "dot_underscore", "float_overflow", "binary_plus", "equals")
}
YAML_CASES.update({
    "list": '{{range gets "/app/list/*"}}{{.Key}}={{.Value}} {{end}}',
    "nested": '{{getv "/app/nested/k"}}',
    "ls_app": '{{ls "/app"}}',
})

CASE_SETS: dict[str, tuple[str, dict[str, str]]] = {
    "functions": (flat_yaml(MAIN), FUNCTIONS),
    "printf": (flat_yaml(MAIN), PRINTF),
    "comparisons": (flat_yaml(MAIN), COMPARISONS),
    "control": (flat_yaml(MAIN), CONTROL),
    "mixed": (flat_yaml(MAIN), MIXED),
    "hostile": (flat_yaml(HOSTILE), HOSTILE_CASES),
    "yaml": (YAML_DATA, YAML_CASES),
}
