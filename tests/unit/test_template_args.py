"""Every template function called with a wrong argument fails naming the function, the
argument and what it got, as a render error of its resource (it used to be Python's own
`AttributeError: 'int' object has no attribute 'split'`, and `fileExists(1)` was true)."""

from __future__ import annotations

import pytest

from confsync.confd_funcs import CONFD_FUNCTIONS
from confsync.convert.runtime import RUNTIME_FUNCTIONS
from confsync.errors import ResourceError
from tests.support.gorender import render_jinja

# name -> (template, what the error must say after "t.tmpl:1: ")
WRONG = {
    # confd's functions
    "base": ("{{ base(5) }}", "base: argument 1 (path) must be a string, got int 5"),
    "dir": ("{{ dir(none) }}", "dir: argument 1 (path) must be a string, got None"),
    "split": ("{{ split(1, ',') }}", "split: argument 1 (text) must be a string, got int 1"),
    "join": ("{{ join(5, ',') }}", "join: argument 1 (items) must be a list of strings, got "
                                   "int 5"),
    "jsonArray": ("{{ jsonArray(1) }}", "jsonArray: argument 1 (text) must be a string, got "
                                        "int 1"),
    "map": ("{{ map(1, 2) }}", "map: argument 1 (a key) must be a string, got int 1"),
    "getenv": ("{{ getenv(1) }}", "getenv: argument 1 (key) must be a string, got int 1"),
    "datetime": ("{{ datetime(1) }}", "datetime: too many positional arguments"),
    "toUpper": ("{{ toUpper(5) }}", "toUpper: argument 1 (text) must be a string, got int 5"),
    "toLower": ("{{ toLower([]) }}", "toLower: argument 1 (text) must be a string, got list []"),
    "contains": ("{{ contains(1, 'a') }}", "contains: argument 1 (text) must be a string"),
    "replace": ("{{ replace('a', 'a', 'b', 'x') }}",
                "replace: argument 4 (count) must be an integer, got str 'x' (atoi turns a "
                "string into one)"),
    "trimSuffix": ("{{ trimSuffix(1, 'x') }}", "trimSuffix: argument 1 (text) must be a string"),
    "lookupIP": ("{{ lookupIP(1) }}", "lookupIP: argument 1 (name) must be a string, got int 1"),
    "lookupIPV4": ("{{ lookupIPV4(none) }}", "lookupIPV4: argument 1 (name) must be a string"),
    "lookupIPV6": ("{{ lookupIPV6([]) }}", "lookupIPV6: argument 1 (name) must be a string"),
    "lookupSRV": ("{{ lookupSRV(1, 'tcp', 'x') }}",
                  "lookupSRV: argument 1 (service) must be a string, got int 1"),
    "fileExists": ("{{ fileExists(1) }}",  # was true: file descriptor 1 exists
                   "fileExists: argument 1 (path) must be a string, got int 1"),
    "base64Encode": ("{{ base64Encode(1) }}", "base64Encode: argument 1 (text) must be a string"),
    "base64Decode": ("{{ base64Decode(1) }}", "base64Decode: argument 1 (text) must be a string"),
    "parseBool": ("{{ parseBool(1) }}", "parseBool: argument 1 (text) must be a string"),
    "reverse": ("{{ reverse(1) }}", "reverse: argument 1 (items) must be a list, got int 1"),
    "sortByLength": ("{{ sortByLength('ab') }}",
                     "sortByLength: argument 1 (items) must be a list of strings, got str 'ab'"),
    "sortKVByLength": ("{{ sortKVByLength([1]) }}",
                       "sortKVByLength([1]): AttributeError: 'int' object has no attribute"),
    "add": ("{{ add('1', 2) }}", "add: argument 1 (a) must be an integer, got str '1'"),
    "sub": ("{{ sub(1, none) }}", "sub: argument 2 (b) must be an integer, got None"),
    "div": ("{{ div(1, 0) }}", "div: integer divide by zero"),
    "mod": ("{{ mod(1, 'x') }}", "mod: argument 2 (b) must be an integer, got str 'x'"),
    "mul": ("{{ mul(true, 2) }}", "mul: argument 1 (a) must be an integer, got bool True"),
    "seq": ("{{ seq('a', 2) }}", "seq: argument 1 (first) must be an integer, got str 'a'"),
    "atoi": ("{{ atoi(none) }}", "atoi: argument 1 (text) must be a string, got None"),
    "trimPrefix": ("{{ trimPrefix(none, 'x') }}", "trimPrefix: argument 1 (text) must be a "
                                                  "string, got None"),
    "lookupIfaceIPV4": ("{{ lookupIfaceIPV4(1) }}", "lookupIfaceIPV4: argument 1 (name) must"),
    "lookupIfaceIPV6": ("{{ lookupIfaceIPV6(1) }}", "lookupIfaceIPV6: argument 1 (name) must"),
    "hostname": ("{{ hostname(1) }}", "hostname: too many positional arguments"),
    "toJson": ("{{ toJson(toJson) }}", "toJson(<function to_json"),
    "sha256sum": ("{{ sha256sum(1) }}", "sha256sum: argument 1 (text) must be a string"),
    # the key-value functions, bound to the render's data
    "getv": ("{{ getv(['/a']) }}", "getv: argument 1 (key) must be a string, got list ['/a']"),
    "get": ("{{ get(1) }}", "get: argument 1 (key) must be a string, got int 1"),
    "exists": ("{{ exists(1) }}", "exists: argument 1 (key) must be a string, got int 1"),
    "gets": ("{{ gets(none) }}", "gets: argument 1 (pattern) must be a string, got None"),
    "getvs": ("{{ getvs(1) }}", "getvs: argument 1 (pattern) must be a string, got int 1"),
    "ls": ("{{ ls(1) }}", "ls: argument 1 (directory) must be a string, got int 1"),
    "lsdir": ("{{ lsdir(1) }}", "lsdir: argument 1 (directory) must be a string, got int 1"),
    "fromjson": ("{{ 5 | fromjson }}", "fromjson: argument 1 (text) must be a string, got int 5"),
    "json": ("{{ json({}) }}", "json: argument 1 (text) must be a string, got dict {}"),
    # the runtime of converted templates
    "go_str": ("{{ go_str() }}", "go_str: missing a required argument: 'value'"),
    "go_len": ("{{ go_len(5) }}", "go_len: error calling len: len of type int (value 5)"),
    "go_index": ("{{ go_index(5, 1) }}", "go_index: can't index item of type int"),
    "go_items": ("{{ go_items(5) }}", "go_items: range can't iterate over 5"),
    "go_values": ("{{ go_values(5) }}", "go_values: range can't iterate over 5"),
    "go_json": ("{{ go_json(5) }}", "go_json: argument 1 (text) must be a string, got int 5"),
    "go_json_array": ("{{ go_json_array(5) }}", "go_json_array: argument 1 (text) must be a "
                                                "string"),
    "go_printf": ("{{ go_printf(5) }}", "go_printf: argument 1 (fmt) must be a string, got int"),
    "go_eq": ("{{ go_eq(1, '1') }}", "go_eq: error calling eq: incompatible types for "
                                     "comparison"),
    "go_ne": ("{{ go_ne(1, 1.0) }}", "go_ne: error calling eq: incompatible types"),
    "go_lt": ("{{ go_lt(1, '1') }}", "go_lt: error calling lt: incompatible types"),
    "go_le": ("{{ go_le([], 1) }}", "go_le: error calling lt: invalid type for comparison"),
    "go_gt": ("{{ go_gt(true, false) }}", "go_gt: error calling lt: invalid type"),
    "go_ge": ("{{ go_ge(none, 1) }}", "go_ge: error calling lt: invalid type"),
    "go_join": ("{{ go_join(5, ',') }}", "go_join: wrong type for value; expected []string; "
                                         "got int"),
}
# Go prints any value: these have no wrong argument (shown here with an odd one).
ANY_VALUE = {"go_print": "{{ go_print({}) }}", "go_print_spaced": "{{ go_print_spaced([]) }}",
             "go_html": "{{ go_html(none) }}", "go_urlquery": "{{ go_urlquery(1) }}",
             "go_reverse": "{{ go_reverse(1) }}"}  # confd's Reverse returns what it can't
FILTERS = {  # the renderer's own filters of the same kind
    "base filter": ("{{ 5 | base }}", "base: argument 1 (path) must be a string, got int 5"),
    "dirname filter": ("{{ [] | dirname }}", "dirname: argument 1 (path) must be a string"),
    "split filter": ("{{ getv('/a') | split(1) }}", "split: argument 2 (sep) must be a string"),
    "Format method": ("{{ datetime().Format(1) }}",
                      "datetime().Format: argument 1 (layout) must be a string, got int 1"),
}
DATA_FUNCTIONS = {"getv", "get", "exists", "gets", "getvs", "ls", "lsdir", "fromjson", "json"}


def test_the_table_covers_every_template_function() -> None:
    every = set(CONFD_FUNCTIONS) | set(RUNTIME_FUNCTIONS) | DATA_FUNCTIONS
    assert every == set(WRONG) | set(ANY_VALUE)


@pytest.mark.parametrize(("template", "expected"), [*WRONG.values(), *FILTERS.values()],
                         ids=[*WRONG, *FILTERS])
def test_a_wrong_argument_is_a_render_error_naming_the_function(template: str,
                                                                expected: str) -> None:
    with pytest.raises(ResourceError) as err:
        render_jinja(template + "\n", {"/a": "x"})
    assert err.value.step == "render" and err.value.resource == "t"
    assert f"t.tmpl:1: {expected}" in err.value.reason, err.value.reason


@pytest.mark.parametrize("template", ANY_VALUE.values(), ids=list(ANY_VALUE))
def test_functions_of_any_value_take_any_value(template: str) -> None:
    render_jinja(template + "\n", {})


def test_the_key_a_refused_argument_came_from_is_named() -> None:
    with pytest.raises(ResourceError, match=r"t\.tmpl:1: key /n: atoi: strconv\.Atoi: parsing "
                                            r"'x': invalid syntax$"):
        render_jinja("{{ atoi(getv('/n')) }}\n", {"/n": "x"})
    with pytest.raises(ResourceError, match=r"key /j: split: argument 1 \(text\) must be a "
                                            r"string, got int 5$"):
        render_jinja("{{ (getv('/j') | fromjson).p | split(',') }}\n", {"/j": '{"p": 5}'})


def test_a_function_refusal_leaves_no_item_out() -> None:
    # `add(kv.value, 1)` without atoi is the template's mistake: leaving out every item
    # would empty the file. (A filter's refusal leaves its item out.)
    template = ("{% for kv in gets('/s/*', skip_invalid=True) %}{{ add(kv.value, 1) }}\n"
                "{% endfor %}")
    with pytest.raises(ResourceError, match="key /s/a: add: argument 1"):
        render_jinja(template, {"/s/a": "1", "/s/b": "2"})


def test_right_arguments_still_render_as_before() -> None:
    text = ("{{ split(getv('/a'), ',') | join(':') }}|{{ toUpper('a') }}{{ base('/x/y/') }}"
            "{{ dir('/x/y') }}{{ '/a/b' | base }}{{ '/a/b' | dirname }}|{{ fileExists('/') }}"
            "|{{ getv('/nope', 80) }}|{{ map('k', 1).k }}|{{ atoi('42') + 1 }}\n")
    assert render_jinja(text, {"/a": "1,2"}) == "1:2|Ay/xb/a|True|80|1|43\n"
