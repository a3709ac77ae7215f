"""Exceptions and exit codes: one place so the CLI can map failures to the contract's codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RESOURCE_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_STORE_UNAVAILABLE = 3
EXIT_WOULD_CHANGE = 4  # `confsync check` only: everything renders and checks, some dest differs
EXIT_CANNOT_RUN = 127  # exec mode: the child's program could not be started (a shell's status)


class ConfsyncError(Exception):
    """Base for every error confsync reports to an operator."""


class ConfigError(ConfsyncError):
    """Bad main configuration, resource file or usage. Exit code 2."""

    def __init__(self, source: str, message: str, key: str | None = None) -> None:
        self.source = source
        self.key = key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class FileNotReadable(ConfigError):
    """A file the settings name for reaching the store (an etcd TLS file, the password file)
    that cannot be read now: machine state that may be fixed (vault-agent or cert-manager
    writing it a second after we started). `watch` and `register` retry it as for etcd being
    away; `once` and `check` exit 3, the transient status a retry loop retries (exit 2 is the
    one the shipped units never restart)."""


class Stopped(BaseException):
    """A signal that ends confsync by its default action arrived while a command ran
    (confsync/stop_along.py): the command was stopped with it, and this unwinds what was
    under way (a staged file removed, the confdir lock released) before the CLI ends the
    process by the same signal. A BaseException, as KeyboardInterrupt: no `except Exception`
    that turns a failure into a resource's error may keep it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StoreUnavailable(ConfsyncError):
    """The data source could not be reached (or answered with an error). Exit code 3."""


class AuthenticationFailed(StoreUnavailable):
    """etcd answered and refused the user and password (a changed password not yet in the
    password file, a deleted user): not an unreachable etcd, and no retry fixes it by itself
    until the credentials are fixed."""


class EndpointNotNamed(StoreUnavailable):
    """The etcd member in use is no longer one the DNS SRV records name (they moved to new
    members, or to a rebuilt cluster, while the old one still serves): a connection to it
    would follow the old cluster for good. The caller reconnects to the members named now."""


def describe_error(exc: BaseException) -> str:
    """One line for an operator: our own errors as they are, a gRPC error as its status and
    etcd's words ("PERMISSION_DENIED: etcdserver: permission denied"; its repr spans lines and
    repeats them), anything else as its type and text (and, for the etcd client's own errors,
    the gRPC error they replaced)."""
    if isinstance(exc, ConfsyncError):
        return str(exc)
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        status = code()
        return f"{getattr(status, 'name', status)}: {details()}"
    if type(exc).__name__ == "NoServerAvailableError":  # (its words: "No endpoint available
        return "no etcd endpoint answers: each one failed at its last try"  # and not failed")
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    # The etcd client turns gRPC's errors into its own, without their words: "etcd connection
    # failed" said nothing of a name DNS cannot resolve, or of a port that refuses.
    cause = exc.__cause__ or exc.__context__
    if type(exc).__module__.startswith("pyetcd") and cause is not None \
            and callable(getattr(cause, "details", None)):
        return f"{described} ({describe_error(cause)})"
    return described


class RevisionCompacted(ConfsyncError):
    """The store cannot replay from the asked revision any more; a fresh snapshot is needed."""

    def __init__(self, compacted_revision: int) -> None:
        self.compacted_revision = compacted_revision
        super().__init__(f"revision compacted up to {compacted_revision}")


class ReplayTooLarge(RevisionCompacted):
    """etcd replays the revisions a resumed watch missed in one message (up to 1,000 of them),
    and that message passed the client's limit: resuming again fails the same way, so the
    follower takes a fresh snapshot instead, as after a compaction."""

    def __init__(self, detail: str) -> None:
        ConfsyncError.__init__(self, f"the replay of the revisions missed does not fit in one "
                                     f"message ({detail})")
        self.compacted_revision = 0


class LongReplay(RevisionCompacted):
    """A resume of several prefixes missed more revisions than etcd replays in one response per
    watch: etcd would send each prefix's replay in parts of 1,000 revisions, 100 ms apart and
    unordered against the other prefixes', and a render between two parts would mix two
    revisions. The follower reads every prefix at one revision instead."""

    def __init__(self, missed: int) -> None:
        ConfsyncError.__init__(self, f"{missed} revisions missed, more than etcd replays at "
                                     f"once")
        self.compacted_revision = 0
        self.missed = missed


class StoreReset(ConfsyncError):
    """The store is not the history we followed: another cluster (recreated etcd), or a revision
    below one we already saw (restored from an older backup). Resuming would wait for revisions
    that mean something else, so a fresh snapshot replaces the mirror."""

    def __init__(self, old_cluster: int, new_cluster: int, old_revision: int,
                 new_revision: int, history: str = "") -> None:
        """`history`: how the server's history differs at a revision we saw, when neither
        the cluster id nor the revision tells (recreated or restored, then written past it)."""
        self.old_cluster = old_cluster
        self.new_cluster = new_cluster
        self.old_revision = old_revision
        self.new_revision = new_revision
        what = (f"cluster id changed from {old_cluster:x} to {new_cluster:x}"
                if old_cluster and new_cluster and old_cluster != new_cluster
                else f"cluster {new_cluster:x} holds another history ({history}; recreated "
                     f"or restored from a backup?)" if history
                else f"cluster {new_cluster:x} is at revision {new_revision}, below revision "
                     f"{old_revision} already seen (restored from an older backup?)")
        super().__init__(f"store reset: {what}; revision {old_revision} -> {new_revision}")


class ResourceError(ConfsyncError):
    """One resource failed at one step; the others go on. Exit code 1."""

    def __init__(self, resource: str, step: str, reason: str, retry: bool = False) -> None:
        self.resource = resource
        self.step = step
        self.reason = reason
        # Failed for a reason outside the data and the template (a DNS lookup in the template
        # that failed for now, a render stopped by render_timeout on a loaded machine): the
        # daemon tries again, as it does a failed check or reload.
        self.retry = retry
        super().__init__(f"resource {resource}: {step} failed: {reason}")


class TemplateMissing(ResourceError):
    """A resource's template file is not there (yet?): a deploy writing conf.d/ before
    templates/, or a typo in `src` rolled out to every instance. Retried until it appears,
    and in /ready a configuration error of its file (reported, counted by
    confsync_config_errors, not failing) as a template with a syntax error is: a typo must
    not take every instance out of service. `once` and `check` fail the resource (exit 1)."""

    def __init__(self, resource: str, src: str) -> None:
        super().__init__(resource, "render", f"template file {src} does not exist (yet?)",
                         retry=True)
