"""The worker's cancel guard: a cancel before the result is reported leaves nothing; one after it (the
caller was already told ``done``) leaves the result where the caller was told it is."""
from __future__ import annotations

from pathlib import Path

from LungSegLib.worker.guard import CANCELLED_EXIT, CancelGuard


def guard_for_test():
    reports, exits = [], []
    guard = CancelGuard(reports.append)
    guard._exit = exits.append  # record the exit status instead of ending the test process
    return guard, reports, exits


def staged_result(guard: CancelGuard, out: Path) -> Path:
    staging = guard.make_staging_dir(out)
    staged = staging / out.name
    staged.write_bytes(b"labels")
    return staged


def test_cancel_before_the_commit_leaves_nothing(tmp_path):
    guard, reports, exits = guard_for_test()
    out = tmp_path / "lungs.nrrd"
    staged = staged_result(guard, out)
    guard.abort("stop")
    assert exits == [CANCELLED_EXIT] and reports == ["stop"]
    assert not staged.parent.exists() and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_cancel_after_done_was_reported_keeps_the_result(tmp_path):
    guard, reports, exits = guard_for_test()
    out = tmp_path / "lungs.nrrd"
    staged = staged_result(guard, out)
    told = []
    guard.commit(staged, out, overwrite=False, then=lambda: told.append("done"))
    guard.abort("too late")  # e.g. SIGTERM while the interpreter shuts down
    assert told == ["done"] and exits == [0] and reports == []
    assert out.read_bytes() == b"labels"
    assert [p.name for p in tmp_path.iterdir()] == ["lungs.nrrd"]  # the staging folder is gone
