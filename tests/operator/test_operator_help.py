"""`saeops operator --help` (issue #19, item 6) lists the operator's own options with their
meaning, not only the `saeops` wrapper's; a bad option is one `error:` line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from saeops.cli import main


def test_help_lists_the_operators_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["operator", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: saeops operator")
    for option, meaning in [("--namespace", "namespace to watch"), ("--all-namespaces", "watch every namespace"),
                            ("--liveness", "liveness endpoint"), ("--metrics-port", "/metrics"),
                            ("--allowed-storage-prefix", "storageUri must lie within")]:
        assert option in out and meaning in out, option


def test_help_as_a_user_types_it_needs_no_torch() -> None:
    # The real console entry (a process): the operator plane never imports the runtime.
    code = ("import sys; from saeops.cli import main\n"
            "try:\n    main(['operator', '--help'])\nexcept SystemExit as e:\n    code = e.code\n"
            "assert 'torch' not in sys.modules, 'the operator imported torch'\nprint('exit', code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--all-namespaces" in done.stdout and done.stdout.rstrip().endswith("exit 0")


def test_a_bad_option_is_one_error_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["operator", "--namespcae", "x"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--namespcae" in lines[0], lines
