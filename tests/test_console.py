"""maskprobe.console: while a command runs, stdout carries its results only (a plugin's print and a C library's
writes to fd 1 go to stderr); without a terminal the results are plain text at 200 columns; signals become a flag."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from maskprobe import console, progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def plain_env(monkeypatch):
    for name in ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def _results_into(stream, fn):
    console._RESULTS.append(stream)
    try:
        fn()
    finally:
        console._RESULTS.pop()
    return stream.getvalue()


# ---- where results go ------------------------------------------------------------------------------------


def test_inside_a_command_prints_go_to_stderr_and_results_to_the_real_stdout(capsys):
    real_stdout = io.StringIO()  # no file descriptor: the in-process case (pytest's capture, a notebook)
    sys_stdout, sys.stdout = sys.stdout, real_stdout
    try:
        with console.results_only_on_stdout():
            assert sys.stdout is sys.stderr
            assert console.results_stream() is real_stdout
            print("a plugin's chatter")
            console.print_json('{"schema": "x/1"}')
            console.out().print("a table")
        assert sys.stdout is real_stdout
        assert console.results_stream() is real_stdout  # outside a command: sys.stdout itself
    finally:
        sys.stdout = sys_stdout
    assert real_stdout.getvalue() == '{"schema": "x/1"}\na table\n'
    assert "a plugin's chatter" in capsys.readouterr().err


def test_an_exception_inside_restores_stdout(capsys):
    before = sys.stdout
    with pytest.raises(RuntimeError, match="boom"), console.results_only_on_stdout():
        raise RuntimeError("boom")
    assert sys.stdout is before and console._RESULTS == []


def test_results_guard_runs_the_command_inside_and_keeps_its_name():
    seen = []

    def compare_cmd(x, *, y=1):
        """Compare masks."""
        seen.append(sys.stdout is sys.stderr)
        return x + y

    guarded = console.results_guard(compare_cmd)
    assert guarded(2, y=3) == 5 and seen == [True]
    assert guarded.__name__ == "compare_cmd" and guarded.__doc__ == "Compare masks."
    assert sys.stdout is not sys.stderr


SCRIPT = textwrap.dedent(
    """
    import os, sys
    from maskprobe import console
    print("before", flush=True)
    with console.results_only_on_stdout():
        print("plugin print")
        sys.stdout.flush()
        os.write(1, b"c library on fd 1\\n")
        console.print_json('{"passed": true}')
        console.out().print("[bold]results table[/bold]")
        {raise_inside}
    print("after", flush=True)
    os.write(1, b"fd 1 restored\\n")
    """
)


def _run(raise_inside="", env=None):
    code = SCRIPT.replace("{raise_inside}", raise_inside)
    env = {**os.environ, **(env or {})}
    env.pop("COLUMNS", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_in_a_real_process_stdout_holds_the_results_only():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'before\n{"passed": true}\nresults table\nafter\nfd 1 restored\n'
    assert "plugin print" in proc.stderr and "c library on fd 1" in proc.stderr
    assert "\x1b[" not in proc.stdout  # a pipe: no colour codes, the markup rendered as plain text


def test_json_on_stdout_stays_one_document_whatever_else_is_written():
    proc = _run()
    results = proc.stdout.split("before\n", 1)[1].split("results table", 1)[0]
    assert json.loads(results) == {"passed": True}


def test_in_a_real_process_an_error_inside_still_restores_fd_1():
    code = SCRIPT.replace("{raise_inside}", "raise SystemExit(3)").replace('print("after", flush=True)', "")
    wrapped = "try:\n" + textwrap.indent(code, "    ") + "\nfinally:\n    import os\n    os.write(1, b'restored\\n')\n"
    proc = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout.endswith("results table\nrestored\n") and "c library on fd 1" not in proc.stdout


# ---- plain output without a terminal ---------------------------------------------------------------------


def test_without_a_terminal_results_are_plain_text_200_columns_wide(plain_env):
    stream = io.StringIO()
    c = None

    def show():
        nonlocal c
        c = console.out()
        c.print("[bold red]FAIL[/bold red] " + "x" * 150)

    text = _results_into(stream, show)
    assert c.width == console.WIDTH_WITHOUT_TERMINAL == 200
    assert c.is_terminal is False and c.color_system is None
    assert text == "FAIL " + "x" * 150 + "\n"  # markup rendered, no escape codes, not wrapped at 80


def test_ci_true_without_a_terminal_is_plain_too(plain_env, monkeypatch):
    monkeypatch.setenv("CI", "true")
    text = _results_into(io.StringIO(), lambda: console.out().print("[bold]x[/bold]"))
    assert text == "x\n"


def test_columns_sets_the_width_of_a_pipe(plain_env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    widths = []
    _results_into(io.StringIO(), lambda: widths.append(console.out().width))
    assert widths == [100]


def test_on_a_terminal_the_terminals_width_and_styles_are_used(plain_env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    out = []
    text = _results_into(FakeTerminal(), lambda: (out.append(console.out()), out[0].print("[bold]x[/bold]")))
    assert out[0].width == 90 and out[0].is_terminal
    assert "\x1b[1m" in text  # bold on a terminal


def test_progress_is_plain_lines_under_ci_or_a_dumb_terminal_or_without_a_terminal(plain_env, monkeypatch):
    from rich.console import Console

    tty = Console(file=FakeTerminal(), force_terminal=True)
    assert progress.interactive(tty) is True
    assert progress.interactive(Console(file=io.StringIO())) is False
    monkeypatch.setenv("CI", "true")
    assert progress.interactive(tty) is False
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TERM", "dumb")
    assert progress.interactive(tty) is False


def test_err_is_a_console_on_stderr(capsys):
    e = console.err()
    e.print("a message", markup=False)
    cap = capsys.readouterr()
    assert cap.err == "a message\n" and cap.out == ""


# ---- signals ---------------------------------------------------------------------------------------------


def test_sigterm_in_the_training_loop_becomes_a_flag_and_a_second_signal_stops_at_once():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with console.Signals() as stop, stop.polled():
        assert stop() is False and stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() is True and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGTERM  # the first signal decides the exit code
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigint_is_remembered_as_sigint():
    with console.Signals() as stop, stop.polled():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT


def test_outside_the_training_loop_a_signal_stops_at_once_with_its_number():
    from maskprobe.errors import Stopped

    with console.Signals() as stop:
        with pytest.raises(Stopped) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
        assert caught.value.signum == signal.SIGTERM and stop.signum == signal.SIGTERM


def test_while_held_no_signal_interrupts_and_the_flag_says_so():
    with console.Signals() as stop:
        with stop.polled(), stop.held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second one too: saving the state must finish
        assert stop() is True and stop.count == 2


def test_signals_outside_the_main_thread_install_nothing_and_do_not_fail():
    seen = []

    def worker():
        with console.Signals() as stop:
            seen.append((stop(), stop._old))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(False, {})]
