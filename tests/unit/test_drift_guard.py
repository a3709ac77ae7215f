"""DriftGuard: when a dest changed by someone else may be rewritten (pure logic, no sleeping)."""

from __future__ import annotations

from confsync.drift import DriftGuard


def test_the_first_change_is_repaired_at_once_then_gaps_double_up_to_the_cap() -> None:
    guard = DriftGuard(first_gap=1.0, cap=8.0, quiet=600.0)
    repaired = [t / 10 for t in range(0, 400) if guard.may_repair("app", t / 10)]
    assert repaired == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0, 39.0]


def test_a_quiet_spell_starts_afresh_and_resources_are_apart() -> None:
    guard = DriftGuard(first_gap=1.0, cap=300.0, quiet=600.0)
    assert guard.may_repair("app", 0.0) and guard.may_repair("app", 1.0)
    assert not guard.may_repair("app", 2.0) and guard.delay("app", 2.0) == 1.0
    assert guard.may_repair("other", 2.0)  # its own account
    assert guard.may_repair("app", 700.0) and guard.delay("app", 700.0) == 1.0


def test_keep_forgets_resources_a_reload_dropped() -> None:
    guard = DriftGuard(first_gap=1.0)
    guard.may_repair("gone", 0.0)
    guard.may_repair("kept", 0.0)
    guard.keep({"kept"})
    assert guard.delay("gone", 0.5) == 0.0 and guard.delay("kept", 0.5) == 0.5
