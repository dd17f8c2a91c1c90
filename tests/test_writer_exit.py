"""How a process is ending, read from the kernel (fs/writer_exit.py).

A zombie keeps PF_EXITING and the exit code it had while it closed its files, so an unreaped
child shows what the flush of a dying writer sees, without FUSE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from chute.fs import writer_exit


def _zombie(args: list[str], kill: int | None = None) -> subprocess.Popen:
    """A child that has exited (or been killed) and is not reaped yet."""
    proc = subprocess.Popen(args)
    if kill is not None:
        time.sleep(0.1)
        os.kill(proc.pid, kill)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                return proc
        time.sleep(0.01)
    raise AssertionError("child did not exit")


@pytest.mark.parametrize(("args", "kill", "status", "said"), [
    (["sh", "-c", "exit 3"], None, 3 << 8, "exit status 3"),
    (["sleep", "30"], signal.SIGKILL, 9, "killed by SIGKILL"),
    (["sleep", "30"], signal.SIGINT, 2, "killed by SIGINT"),
    (["sh", "-c", "exit 0"], None, 0, "exit status 0"),
])
def test_an_exited_process_shows_its_wait_status(args, kill, status, said) -> None:
    proc = _zombie(args, kill)
    try:
        end = writer_exit.ending(proc.pid)
        assert end is not None
        assert end.wait_status == status
        assert end.failed is (status != 0)
        assert end.describe() == said
        assert end.command == args[0]
        assert (writer_exit.failed_closer([proc.pid]) is not None) is (status != 0)
    finally:
        proc.wait()


def test_a_live_process_is_not_ending() -> None:
    assert writer_exit.ending(os.getpid()) is None
    assert writer_exit.failed_closer([os.getpid()]) is None


def test_a_gone_process_is_not_ending() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert writer_exit.ending(proc.pid) is None


def _stat(comm: str, flags: int, exit_code: int) -> str:
    fields = ["S", "1", "1", "1", "0", "-1", str(flags)] + ["0"] * 42 + [str(exit_code)]
    return f"123 ({comm}) " + " ".join(fields) + "\n"


def test_a_command_name_with_spaces_and_parens_does_not_shift_fields() -> None:
    end = writer_exit.parse_stat(123, _stat("a) (b c", writer_exit.PF_EXITING, 9))
    assert end == writer_exit.ProcessEnd(123, "a) (b c", 9)


@pytest.mark.parametrize("text", [
    "", "garbage", "123 (x) S 1", _stat("x", writer_exit.PF_EXITING, 9).replace(" 9\n", " z\n"),
    "9" * 10_000,
])
def test_malformed_stat_is_not_an_ending(text: str) -> None:
    assert writer_exit.parse_stat(123, text) is None


def test_flags_without_pf_exiting_is_not_an_ending() -> None:
    assert writer_exit.parse_stat(123, _stat("cat", 0x400000, 9)) is None
