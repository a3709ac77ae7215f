"""The in-memory copy of every watched key at a known revision.

Snapshots load it, watch batches update it incrementally; templates read it. A change never
re-reads the store. Keys are kept sorted too, so prefix and glob queries are bisections rather
than scans: a 5,000-server template reads its keys in one range walk.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from confsync.stores import ChangeBatch, Snapshot


# A NamedTuple, not a dataclass: one `exec` to create, where a frozen dataclass's six (one
# per generated method, Python 3.11) were ~0.3 ms of every one-shot run (issue 11).
class BadValue(NamedTuple):
    """A value that is not UTF-8 text. Kept (the key exists) but never rendered."""

    raw: bytes

    def reason(self) -> str:
        return f"value is not valid UTF-8 text ({len(self.raw)} bytes)"


Value = str | BadValue


def decode(raw: bytes) -> Value:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return BadValue(raw)


# A batch of more than BULK_CHANGES changes, and more than 1/BULK_SHARE of the keys held, sorts
# the key list anew rather than inserting and deleting one key at a time.
BULK_CHANGES = 256
BULK_SHARE = 32
# Glob matches remembered per key set (`keys_matching`); past this many, forgotten at once.
MATCHES_MAX = 1024


def prefix_end(prefix: str) -> str:
    """The smallest string above every string that starts with `prefix`."""
    return prefix + "\U0010ffff"


class Mirror:
    def __init__(self) -> None:
        self.revision = 0
        # Bumped by every load and by every apply that changed a value: one Mirror at one
        # version holds one state (its revision alone does not say it: a store reset loads a
        # lower one, and the revisions of the new store may reach the old number).
        self.version = 0
        self._values: dict[str, Value] = {}
        self._keys: list[str] = []
        # (prefix, pattern) -> the keys it matches, while the key set stays as it is.
        self._matches: dict[tuple[str, re.Pattern[str]], list[str]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def load(self, snapshot: Snapshot) -> set[str]:
        """Replace everything with `snapshot`; return the keys whose value changed.

        A first load (every `once`) takes C's loops: values that are all UTF-8 decode in one
        `map`, and every key is a change (1.6 ms of Python loops for 5,000 keys before)."""
        raw = snapshot.values
        try:
            new: dict[str, Value] = dict(zip(raw, map(bytes.decode, raw.values()), strict=True))
        except (UnicodeDecodeError, TypeError):  # one is not (or not bytes): each on its own
            new = {k: decode(v) for k, v in raw.items()}
        if self._values:
            changed = {k for k in new.keys() | self._values.keys()
                       if new.get(k) != self._values.get(k)}
        else:
            changed = set(new)
        self._values = new
        self._keys = sorted(new)
        self._matches.clear()
        self.revision = snapshot.revision
        self.version += 1
        return changed

    def apply(self, batch: ChangeBatch) -> set[str]:
        """Apply one watch batch as a whole; return the keys whose value changed.

        A big batch (a DeleteRange of a whole prefix, an expired lease of thousands of keys)
        sorts the key list once: each insert or delete in it moves the list's tail, so one
        DeleteRange of 300,000 keys held the loop 4 s (quadratic), now a tenth of a second.
        """
        changed: set[str] = set()
        bulk = len(batch.changes) > BULK_CHANGES and \
            len(batch.changes) * BULK_SHARE > len(self._keys)
        resort = False
        for change in batch.changes:
            old = self._values.get(change.key)
            if change.value is None:
                if old is None:
                    continue
                del self._values[change.key]
                self._matches.clear()
                if bulk:
                    resort = True
                else:
                    del self._keys[bisect.bisect_left(self._keys, change.key)]
            else:
                value = decode(change.value)
                if old == value:
                    continue
                if old is None:
                    self._matches.clear()
                    if bulk:
                        resort = True
                    else:
                        bisect.insort(self._keys, change.key)
                self._values[change.key] = value
            changed.add(change.key)
        if resort:
            self._keys = sorted(self._values)
        if changed:
            self.version += 1
        self.revision = max(self.revision, batch.revision)
        return changed

    def get(self, key: str) -> Value | None:
        return self._values.get(key)

    def values_of(self, keys: Iterable[str]) -> list[Value]:
        """The values of `keys`, which must be present (from `keys_with_prefix`): one C loop
        where 5,000 calls of `get` cost a render or a digest ~1 ms."""
        return list(map(self._values.__getitem__, keys))

    def keys_with_prefix(self, prefix: str) -> Iterator[str]:
        lo = bisect.bisect_left(self._keys, prefix)
        hi = bisect.bisect_left(self._keys, prefix_end(prefix), lo)
        return iter(self._keys[lo:hi])

    def keys_matching(self, prefix: str, regex: re.Pattern[str]) -> list[str]:
        """The keys under `prefix` that `regex` matches, in order: a shared list, never to be
        changed. Remembered until a key is added or removed (a value changed in place keeps
        it): a 5,000-item `gets` matched every key again at every render (~1 ms)."""
        found = self._matches.get((prefix, regex))
        if found is None:
            if len(self._matches) >= MATCHES_MAX:
                self._matches.clear()
            found = self._matches[prefix, regex] = list(
                filter(regex.match, self.keys_with_prefix(prefix)))
        return found

    def child_names(self, base: str) -> Iterator[tuple[str, bool]]:
        """(name, has_children) for each direct child of `base` (which ends with '/').

        Jumps over each child's subtree with a bisection, so listing 10 services with 5,000
        instances each costs 10 steps, not 50,000.
        """
        keys = self._keys
        lo = bisect.bisect_left(keys, base)
        hi = bisect.bisect_left(keys, prefix_end(base), lo)
        while lo < hi:
            head, sep, _ = keys[lo][len(base):].partition("/")
            if not sep:
                # a leaf; a directory of the same name may follow ("a" < "a/...")
                nxt = lo + 1
                is_dir = nxt < hi and keys[nxt].startswith(base + head + "/")
                yield head, is_dir
                lo = bisect.bisect_left(keys, prefix_end(base + head + "/"), nxt, hi) \
                    if is_dir else nxt
                continue
            yield head, True
            lo = bisect.bisect_left(keys, prefix_end(base + head + "/"), lo, hi)

    def count(self, prefixes: Iterable[str]) -> int:
        total = 0
        for prefix in prefixes:
            lo = bisect.bisect_left(self._keys, prefix)
            total += bisect.bisect_left(self._keys, prefix_end(prefix), lo) - lo
        return total

    def as_dict(self) -> Mapping[str, Value]:
        return self._values
