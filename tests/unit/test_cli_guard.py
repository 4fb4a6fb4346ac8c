"""The CLI's backstop: an exception none of our checks turned into an AirgapError prints
one ``internal error`` line and exits 1; its traceback only with ``--debug`` or
``AIRGAP_DEBUG=1``; Ctrl-C exits 130 (issue: hostile input, the top-level guard).

A core function is replaced by one that raises, because every input we know of is now
caught precisely; the guard is for the ones we do not know of yet."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import bundler.manifest
from bundler.cli.main import main
from bundler.errors import EXIT_FAILURE, EXIT_INTERRUPTED


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code or 0), capsys.readouterr().err


@pytest.fixture
def raising(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """``load_manifest`` raises whatever the test puts in the list."""
    box: list[BaseException] = []

    def boom(path: Path) -> None:
        raise box[0]

    monkeypatch.setattr(bundler.manifest, "load_manifest", boom)
    monkeypatch.delenv("AIRGAP_DEBUG", raising=False)
    return box


@pytest.mark.parametrize(
    "error, words",
    [
        (KeyError("nginx"), "KeyError: 'nginx'"),
        (RecursionError("maximum recursion depth exceeded"), "input nested too deeply"),
        (MemoryError(), "MemoryError: (no message) (out of memory)"),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), "not valid UTF-8"),
        (ValueError("negative\ncount"), "ValueError: negative count"),
    ],
)
def test_an_unexpected_exception_is_one_line_and_exit_1(
    raising: list[BaseException],
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    words: str,
) -> None:
    raising.append(error)
    code, err = run(["validate", "m.yaml"], capsys)
    assert code == EXIT_FAILURE
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("error: internal error: ") and words in lines[0], err
    assert lines[1].startswith("hint: ") and "--debug" in lines[1] and "AIRGAP_DEBUG=1" in lines[1]


def test_debug_shows_the_traceback(
    raising: list[BaseException],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raising.append(KeyError("nginx"))
    code, err = run(["--debug", "validate", "m.yaml"], capsys)
    assert code == EXIT_FAILURE and "Traceback (most recent call last)" in err
    assert "in boom" in err and "error: internal error: KeyError: 'nginx'" in err
    monkeypatch.setenv("AIRGAP_DEBUG", "1")
    code, err = run(["validate", "m.yaml"], capsys)
    assert code == EXIT_FAILURE and "Traceback (most recent call last)" in err


def test_ctrl_c_exits_130_without_a_traceback(
    raising: list[BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    raising.append(KeyboardInterrupt())
    code, err = run(["validate", "m.yaml"], capsys)
    assert code == EXIT_INTERRUPTED and "Traceback" not in err and "interrupted" in err


def test_our_own_errors_are_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["validate", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and err.startswith("error: ") and "internal error" not in err


def test_a_stray_os_error_is_not_called_a_network_failure(
    raising: list[BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    raising.append(FileNotFoundError(2, "No such file or directory", "/x/y.partial"))
    code, err = run(["validate", "m.yaml"], capsys)
    assert code == EXIT_FAILURE
    assert err.startswith("error: /x/y.partial: No such file or directory") and "network" not in err


def test_a_stray_transport_error_is_named_as_one(
    raising: list[BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    import requests

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    try:
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    except requests.ConnectionError as e:
        raising.append(e)
    code, err = run(["validate", "m.yaml"], capsys)
    assert code == EXIT_FAILURE and "Traceback" not in err
    assert err.startswith("error: network: connection refused"), err
