"""What `watch` and `register` import at their start: every module they could otherwise first
import months later, from files an in-place upgrade has replaced (or removed) meanwhile."""

from __future__ import annotations

import importlib

# Every module `watch` or `register` could otherwise import for the first time long after its
# start. confsync imports these inside functions, where only some runs need them, so that a
# one-shot `once` or `check` does not pay for them (and their dependencies) at start. A daemon
# must not wait: an operator upgrades confsync (`pip install` into its venv) or its packages
# under a running daemon and restarts it later, and a module first imported after that comes
# from the new files (or from none, while pip has removed the old ones and not yet written the
# new): a SIGHUP adding the first [haproxy] resource was refused with ModuleNotFoundError, and
# every failing render was reported as "No module named 'jinja2.debug'" instead of its reason
# (docs/operations.md, "Upgrading in place"). So the long-running commands import them all
# before they start, and a broken installation is an error at start, not days later.
# tests/unit/test_lazy_imports.py fails when a function-level import on a daemon path is missing.
LAZY_MODULES = (
    # confsync's own: plugins (by [table] name, confsync.plugins) and the stores a SIGHUP can
    # switch to
    "confsync.haproxy.plugin",
    "confsync.command_reload",  # a resource's reload_cmd or reload_signal (confsync.reload)
    "confsync.path_writers",  # who may have written a reload_signal's pidfile (processes)
    "confsync.check_dirs",  # Syncer.plan (`check`)
    "confsync.stores.env",
    "confsync.stores.etcd",
    "confsync.stores.etcd_gateway",
    "confsync.stores.file",
    "confsync.stores.srv",
    "confsync.fswatch",
    "confsync.block_memo",  # the renderer's `{% memo %}` (with jinja2.ext), imported with Jinja2
    # the first failing render or template syntax error (Jinja2 imports this inside a function)
    "jinja2",
    "jinja2.debug",
    # reload_signal targets, lookupIface*, reaping as PID 1
    "psutil",
    # the file backend, [watch] confdir
    "yaml",
    "watchdog.events",
    "watchdog.observers",
    "watchdog.observers.polling",
    # srv_domain and lookupSRV; dnspython imports a record type's module when first met
    "dns.resolver",
    "dns.rdtypes.IN.SRV",
    "dns.rdtypes.IN.A",
    "dns.rdtypes.IN.AAAA",
    "dns.rdtypes.ANY.CNAME",
    # the standard library's: a render_timeout that fires, diffs and suggestions, TLS
    # endpoints, host names given to socket calls, a float in a converted template's printf
    "ctypes",
    "decimal",
    "difflib",
    "ssl",
    "encodings.idna",
)


def preload_lazy_modules() -> None:
    """Import LAZY_MODULES (ImportError: the installation is incomplete or broken)."""
    for name in LAZY_MODULES:
        importlib.import_module(name)


__all__ = ["LAZY_MODULES", "preload_lazy_modules"]
