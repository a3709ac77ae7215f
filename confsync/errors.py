"""Exceptions and exit codes: one place so the CLI can map failures to the contract's codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RESOURCE_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_STORE_UNAVAILABLE = 3
EXIT_WOULD_CHANGE = 4  # `confsync check` only: everything renders and checks, some dest differs


class ConfsyncError(Exception):
    """Base for every error confsync reports to an operator."""


class ConfigError(ConfsyncError):
    """Bad main configuration, resource file or usage. Exit code 2."""

    def __init__(self, source: str, message: str, key: str | None = None) -> None:
        self.source = source
        self.key = key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class StoreUnavailable(ConfsyncError):
    """The data source could not be reached (or answered with an error). Exit code 3."""


class RevisionCompacted(ConfsyncError):
    """The store cannot replay from the asked revision any more; a fresh snapshot is needed."""

    def __init__(self, compacted_revision: int) -> None:
        self.compacted_revision = compacted_revision
        super().__init__(f"revision compacted up to {compacted_revision}")


class ResourceError(ConfsyncError):
    """One resource failed at one step; the others go on. Exit code 1."""

    def __init__(self, resource: str, step: str, reason: str) -> None:
        self.resource = resource
        self.step = step
        self.reason = reason
        super().__init__(f"resource {resource}: {step} failed: {reason}")
