"""`confsync convert CONFD_CONFDIR NEW_CONFDIR`: a whole confd confdir in one step.

Resources (`conf.d/*.toml`) keep their fields; templates are translated from Go text/template
to Jinja2 (jinja.py); `confd.toml` becomes `confsync.toml`. Everything is written to a temporary
directory beside NEW_CONFDIR and renamed into place at the end, so a refusal anywhere leaves
nothing half-converted. What has no counterpart is reported, never silently dropped.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confsync import tomlvalues as tv
from confsync.convert import resource_spelling as spelling
from confsync.convert.gotemplate import GoTemplateError
from confsync.convert.jinja import convert_template
from confsync.errors import ConfigError

# Characters that mean confd's `sh -c` did real shell work in a command (a line break
# separates commands there; shlex took it for a space, so `true\nfalse` passed).
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?~\n]|\[\[|(?:^|\s)#")
# First words only sh runs: an assignment (`LC_ALL=C nginx -t`), a builtin with no program of
# its name, a keyword. Without sh they failed as programs not found (measured against confd).
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_SHELL_WORDS = frozenset((
    "!", ":", ".", "alias", "break", "case", "cd", "continue", "do", "done", "elif", "else",
    "esac", "eval", "exec", "exit", "export", "fi", "for", "function", "getopts", "if", "local",
    "read", "readonly", "return", "set", "shift", "source", "then", "time", "times", "trap",
    "ulimit", "umask", "unset", "until", "wait", "while", "{", "}"))
_RESOURCE_FIELDS = ("src", "dest", "keys", "prefix", "mode", "uid", "gid", "owner", "group")
_CONFD_SRC = re.compile(r"\{\{\s*\.(src|dest)\s*\}\}")
_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning",
               "error": "error", "fatal": "error", "panic": "error"}


class ConvertError(Exception):
    """The confdir cannot be converted; nothing was written."""


@dataclass
class Report:
    converted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # no counterpart / changed meaning
    refusals: list[str] = field(default_factory=list)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _command(value: Any, key: str, where: str, report: Report) -> Any:
    """confd runs commands with `sh -c`; confsync splits them and runs no shell. A command that
    uses shell syntax keeps working as an explicit `["sh", "-c", ...]`."""
    if not isinstance(value, str):
        return value
    note = spelling.unsubstituted_note(key, value)
    if note:
        report.notes.append(f"{where}: {note}")
    text = _CONFD_SRC.sub(lambda m: "{{" + m.group(1) + "}}", value)
    if _SHELL_SYNTAX.search(text):
        report.notes.append(f"{where}: uses shell syntax; kept as [\"sh\", \"-c\", ...] "
                            "(confsync runs no shell otherwise); review it")
        return ["sh", "-c", text]
    try:
        words = shlex.split(text)
    except ValueError:
        report.notes.append(f"{where}: cannot be split like a shell would; kept under sh -c")
        return ["sh", "-c", text]
    if words and (_ASSIGNMENT.match(words[0]) or words[0] in _SHELL_WORDS):
        report.notes.append(f"{where}: starts with {words[0]!r}, which only a shell runs; kept "
                            "as [\"sh\", \"-c\", ...] (confsync runs no shell otherwise); "
                            "review it")
        return ["sh", "-c", text]
    return text


def convert_resource(path: Path, global_prefix: str | None, report: Report) -> tuple[str, str]:
    """(new TOML text, template src) for one confd resource file."""
    try:
        data = tv.read_toml(path)
    except ConfigError as exc:  # unreadable, not UTF-8, not TOML, nested too deeply
        raise ConvertError(str(exc)) from None
    table = spelling.template_table(data)
    try:
        table = spelling.fold_fields(table) if isinstance(table, dict) else None
    except spelling.SpellingError as exc:
        raise ConvertError(f"{path}: {exc}") from None
    if table is None or "src" not in table:
        raise ConvertError(f"{path}: no [template] table with src")
    lines = ["[template]"]
    for key, value in table.items():
        where = f"{path.name}: template.{key}"
        try:
            if key == "mode" and isinstance(value, str):
                mode, note = spelling.confd_mode(value)
                if note:
                    report.notes.append(f"{where}: {note}")
                if mode:
                    lines.append(f"mode = {_toml_value(mode)}")
            elif spelling.unset_id(key, value):
                report.notes.append(f"{where}: -1 is unset to confd (its own id); dropped")
            elif key in ("check_cmd", "reload_cmd"):
                lines.append(f"{key} = {_toml_value(_command(value, key, where, report))}")
            elif key == "prefix" and global_prefix:
                report.notes.append(f"{where}: dropped; confd replaces a resource prefix with "
                                    f"the global prefix {global_prefix!r}, which confsync.toml "
                                    "keeps")
            elif key in _RESOURCE_FIELDS:
                lines.append(f"{key} = {_toml_value(value)}")
            else:
                report.notes.append(f"{where}: no counterpart in confsync, dropped")
        except TypeError as exc:  # a table or a date where confd takes a string, number, list
            raise ConvertError(f"{path}: template.{key}: {exc} (confd does not take it "
                               "either)") from None
    if "keys" not in table:
        # confd gives such a template no keys at all; confsync wants that said.
        lines.append("keys = []")
        report.notes.append(f"{path.name}: no keys: written as keys = [] (the template reads "
                            "no keys; it renders at start and on [watch] interval)")
    for extra in spelling.other_tables(data):
        report.notes.append(f"{path.name}: table [{extra}] has no counterpart, dropped")
    return "\n".join(lines) + "\n", str(table["src"])


def convert_main_config(path: Path, new_confdir: Path, out_dir: Path,
                        report: Report) -> tuple[str, str | None]:
    """(confsync.toml text, global prefix) from a confd.toml."""
    try:
        conf = tv.read_toml(path)
    except ConfigError as exc:  # unreadable, not UTF-8, not TOML, nested too deeply
        raise ConvertError(str(exc)) from None
    top: list[str] = [f"confdir = {_toml_value(str(new_confdir))}"]
    etcd: list[str] = []
    file_paths: list[str] = []
    prefix = conf.get("prefix") or None
    backend = conf.get("backend", "etcd")
    if backend == "etcdv3":
        top.append('backend = "etcd"')
    elif backend in ("env", "file"):
        top.append(f'backend = "{backend}"')
    else:
        top.append('backend = "etcd"')
        report.notes.append(f"confd.toml: backend {backend!r} has no counterpart (confsync "
                            "reads etcd v3, files and the environment); set to etcd, review it")
    raw_nodes = conf.get("nodes", [])
    if not isinstance(raw_nodes, list) or not all(isinstance(v, str) for v in raw_nodes):
        raise ConvertError(f"{path}: nodes: expected a list of strings such as "
                           f"[\"127.0.0.1:2379\"], found {raw_nodes!r}")
    nodes = [v if "://" in v else f"http://{v}" for v in raw_nodes]
    try:
        for key, value in conf.items():
            where = f"confd.toml: {key}"
            if key in ("backend", "confdir"):
                continue
            if key == "prefix":
                if value:
                    top.append(f"prefix = {_toml_value(value)}")
            elif key == "nodes":
                if backend == "etcdv3" and conf.get("srv_domain"):
                    report.notes.append(f"{where}: dropped: confd used srv_domain's SRV records "
                                        "instead, and so does confsync (the two together are an "
                                        "error there)")
                elif backend == "etcdv3":
                    etcd.append(f"endpoints = {_toml_value(nodes)}")
            elif key == "srv_domain":
                if value:
                    etcd.append(f"srv_domain = {_toml_value(value)}")
                    report.notes.append(f"{where}: confsync asks _etcd-client-ssl._tcp and "
                                        f"_etcd-client._tcp, then confd's _etcdv3._tcp under it "
                                        "(https for that one when ca_cert or cert is set)")
            elif key == "scheme":
                if str(value).lower() == "https" and not (conf.get("client_cakeys")
                                                          or conf.get("client_cert")):
                    report.notes.append(f"{where}: confsync takes https for SRV endpoints when "
                                        "ca_cert or cert is set; set ca_cert (system CAs: give "
                                        "their bundle)")
            elif key in ("client_cert", "client_key", "client_cakeys"):
                name = {"client_cert": "cert", "client_key": "key",
                        "client_cakeys": "ca_cert"}[key]
                etcd.append(f"{name} = {_toml_value(value)}")
            elif key == "username":
                etcd.append(f"user = {_toml_value(value)}")
            elif key == "password":
                secret = out_dir / "etcd-password"
                fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(str(value))
                etcd.append(f"password_file = {_toml_value(str(new_confdir / 'etcd-password'))}")
                report.notes.append(f"{where}: moved to {new_confdir / 'etcd-password'} "
                                    "(mode 0600); confsync never keeps a password in its config")
            elif key == "file" and backend == "file":
                file_paths = value if isinstance(value, list) else [value]
            elif key == "log-level":
                level = _LOG_LEVELS.get(str(value).lower())
                if level:
                    top.append(f'log_level = "{level}"')
                else:
                    report.notes.append(f"{where}: {value!r} has no counterpart, dropped")
            elif key == "interval":
                report.notes.append(f"{where}: confsync watches etcd instead of polling; "
                                    "[watch] interval is only a safety resync (off by default)")
            elif key == "watch":
                report.notes.append(f"{where}: confsync always watches under `confsync watch`; "
                                    "`confsync once` is confd -onetime")
            else:
                report.notes.append(f"{where}: no counterpart in confsync, dropped")
    except TypeError as exc:  # a table or a date where confd takes a string, number, list
        raise ConvertError(f"{path}: {key}: {exc} (confd does not take it either)") from None
    if conf.get("username") and conf.get("password") and not conf.get("client_cakeys") and \
            not any(n.lower().startswith("https://") for n in nodes):
        # confd sent the password in clear text; confsync refuses to (exit 2 until fixed).
        report.notes.append("confd.toml: username/password over plain http:// nodes: confsync "
                            "never sends a password unencrypted; give https:// nodes or "
                            "client_cakeys (ca_cert), or `check` and `watch` stop with exit 2")
    text = "\n".join(top) + "\n"
    if etcd and backend == "etcdv3":
        text += "\n[etcd]\n" + "\n".join(etcd) + "\n"
    if file_paths:
        text += f"\n[file]\npaths = {_toml_value(file_paths)}\n"
    return text, prefix


def confd_resource_files(confd_dir: Path) -> list[Path]:
    """The resource files confd 0.17 reads: every file under conf.d, at any depth, whose name
    matches `*toml` (its RecursiveFilesLookup: symlinked directories are not entered)."""
    found: list[Path] = []
    for top, _dirs, files in os.walk(confd_dir):
        found.extend(Path(top) / name for name in files if fnmatch.fnmatchcase(name, "*toml"))
    return sorted(found)


def flat_resource_name(rel: str) -> str:
    """conf.d/<rel> as a file name directly in conf.d/ ending in `.toml`, which is all confsync
    reads: `tnt/config.toml` becomes `tnt-config.toml`."""
    name = rel.replace("/", "-")
    return name if name.endswith(".toml") else name + ".toml"


def convert_confdir(old: Path, new: Path) -> Report:
    """Convert everything or nothing. Raises ConvertError listing every refusal."""
    old, new = old.absolute(), new.absolute()
    if not (old / "conf.d").is_dir():
        raise ConvertError(f"{old / 'conf.d'}: not a directory (is {old} a confd confdir?)")
    if new.exists() and (not new.is_dir() or any(new.iterdir())):
        raise ConvertError(f"{new}: exists and is not empty; choose a new directory")
    report = Report()
    for parent in reversed([new.parent, *new.parent.parents]):
        if not parent.is_dir():  # 0755, not mkdir -p's umask modes (0777 under umask 000)
            parent.mkdir(mode=0o755)
            os.chmod(parent, 0o755)
    work = Path(tempfile.mkdtemp(prefix=f".{new.name}.", dir=new.parent))
    try:
        (work / "conf.d").mkdir()
        (work / "templates").mkdir()
        global_prefix = None
        if (old / "confd.toml").is_file():
            text, global_prefix = convert_main_config(old / "confd.toml", new, work, report)
            (work / "confsync.toml").write_text(text, "utf-8")
            report.converted.append("confd.toml -> confsync.toml")
        sources: dict[str, str] = {}
        written: dict[str, str] = {}
        for path in confd_resource_files(old / "conf.d"):
            rel = path.relative_to(old / "conf.d").as_posix()
            name = flat_resource_name(rel)
            if name in written:
                report.refusals.append(f"conf.d/{written[name]} and conf.d/{rel} would both be "
                                       f"written as conf.d/{name}; rename one of them")
                continue
            written[name] = rel
            text, src = convert_resource(path, global_prefix, report)
            (work / "conf.d" / name).write_text(text, "utf-8")
            sources.setdefault(src, name)
            if name != rel:
                report.notes.append(f"conf.d/{rel}: written as conf.d/{name} (confd reads conf.d "
                                    "and its subdirectories, confsync conf.d/*.toml alone)")
            report.converted.append(f"conf.d/{rel}")
        for src, resource in sources.items():
            template = Path(src) if Path(src).is_absolute() else old / "templates" / src
            if Path(src).is_absolute():
                report.notes.append(f"{resource}: template {src} is absolute; converted copy "
                                    "not written (convert it with its own confdir)")
                continue
            target = Path(os.path.normpath(work / "templates" / src))
            if not target.is_relative_to(work):
                # `../../x` from templates/: confd reads it there, but a converted copy is only
                # ever written inside NEW_CONFDIR (it would have replaced any file above it).
                report.notes.append(f"{resource}: template {src} leads outside the confdir; "
                                    "converted copy not written (convert it with its own "
                                    "confdir)")
                continue
            try:
                # not read_text: its newline translation turned confd's CRLF into LF
                source = template.read_bytes().decode("utf-8")
            except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or a NUL in src
                report.refusals.append(f"{template}: cannot read: {exc}")
                continue
            try:
                jinja = convert_template(str(template), source)
            except GoTemplateError as exc:
                report.refusals.append(str(exc))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(jinja, encoding="utf-8")
            report.converted.append(f"templates/{src}")
        if report.refusals:
            raise ConvertError("refused, nothing written:\n  " + "\n  ".join(report.refusals))
        # Modes never the umask's: under `umask 000` conf.d (whose check_cmd and reload_cmd a
        # root `watch` runs) and templates/ were world-writable, 0777 and 0666.
        for path in work.rglob("*"):
            if path != work / "etcd-password":  # (0600 already)
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
        # mkdtemp made it 0700; a confdir holding an etcd password stays private to the group
        os.chmod(work, 0o750 if (work / "etcd-password").exists() else 0o755)
        if new.exists():
            new.rmdir()
        os.rename(work, new)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return report
