"""The single-process pass selects tests by the ``whole_stack`` marker: a test that starts
a whole mxfed without it, and without choosing the mode, must fail before it starts
anything, or that pass would leave it out without anyone noticing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import mxfed_process
from tests.support.mxfed_process import WHOLE_STACK, MxfedProcess


def _test_item(marked: bool) -> SimpleNamespace:
    return SimpleNamespace(
        nodeid="tests/test_example.py::test_example",
        get_closest_marker=lambda name: object() if marked and name == WHOLE_STACK else None,
    )


def test_an_unmarked_test_that_leaves_the_mode_open_fails_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mxfed_process, "running_test", _test_item(marked=False))
    mxfed = MxfedProcess(tmp_path / "data", "postgresql://127.0.0.1:1/none")
    with pytest.raises(AssertionError, match="mark its module pytest.mark.whole_stack"):
        mxfed.start()
    assert mxfed.process is None
    assert not (tmp_path / "data").exists()  # not even its configuration written


def test_a_marked_test_or_one_that_chose_the_mode_gets_past_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mxfed_process, "running_test", _test_item(marked=True))
    MxfedProcess(tmp_path / "a", "postgresql:///x")._check_marked()
    monkeypatch.setattr(mxfed_process, "running_test", _test_item(marked=False))
    MxfedProcess(tmp_path / "b", "postgresql:///x", single_process=False)._check_marked()


def test_the_pass_decides_the_mode_of_a_test_that_leaves_it_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MXFED_TEST_SINGLE_PROCESS", "1")
    single = MxfedProcess(tmp_path / "a", "postgresql:///x")
    assert single.single_process is True and not single.mode_given
    chosen = MxfedProcess(tmp_path / "b", "postgresql:///x", single_process=False)
    assert chosen.single_process is False and chosen.mode_given
    # The pass's setting is the test harness's, not the server's.
    assert "MXFED_TEST_SINGLE_PROCESS" not in single.environment()
    monkeypatch.delenv("MXFED_TEST_SINGLE_PROCESS")
    assert MxfedProcess(tmp_path / "c", "postgresql:///x").single_process is False
