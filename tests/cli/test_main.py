"""``wsync``'s parser and ``main(argv)``, ``python -m wsync``, and the package's layout."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wsync
from tests.cli.support import ROOT, run_wsync
from wsync._cli import main
from wsync._cli._console import EXIT_CODES, EXIT_OK, EXIT_USAGE

pytestmark = pytest.mark.timeout(60)

PACKAGE = ROOT / "wsync" / "_cli"
COMMANDS = ("_demo", "_serve", "_send", "_chat")


class TestArguments:
    def test_help_explains_commands_examples_and_exit_codes(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--help lists every command, examples and the exit codes, and exits 0."""
        assert main(["--help"]) == EXIT_OK
        out = capsys.readouterr().out
        for word in ("demo", "serve", "send", "chat", "examples:", "exit codes:"):
            assert word in out

    @pytest.mark.parametrize("command", ["demo", "serve", "send", "chat"])
    def test_each_command_has_help(self, command: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Every command's --help exits 0 with a description."""
        assert main([command, "--help"]) == EXIT_OK
        assert f"wsync {command}" in capsys.readouterr().out

    def test_send_help_says_what_a_failed_message_prints(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """wsync send --help documents the line a failed message leaves, in text and JSON."""
        assert main(["send", "--help"]) == EXIT_OK
        out = " ".join(capsys.readouterr().out.split())
        assert "Line N of the output is about message N" in out
        assert "{messageId, error}" in out

    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["nope"],
            ["send"],
            ["send", "ws://127.0.0.1:1"],
            ["send", "ws://127.0.0.1:1", "hi", "--timeout", "-1"],
            ["send", "ws://127.0.0.1:1", "hi", "--timeout", "soon"],
            ["send", "ws://127.0.0.1:1", "hi", "--client-id", "has space"],
            ["serve", "--port", "70000"],
            ["demo", "--log-level", "loud"],
        ],
    )
    def test_bad_arguments_exit_2(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Bad arguments are argparse errors: usage on stderr, exit code 2."""
        assert main(argv) == EXIT_USAGE
        assert "usage: wsync" in capsys.readouterr().err

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the version and exits 0."""
        assert main(["--version"]) == EXIT_OK
        assert wsync.__version__ in capsys.readouterr().out

    def test_python_dash_m_wsync_works(self) -> None:
        """``python -m wsync`` runs the same command line."""
        result = run_wsync("--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("wsync ")


def test_exit_codes_are_distinct() -> None:
    """Each failure class has its own exit code."""
    codes = list(EXIT_CODES.values())
    assert len(codes) == len(set(codes))


def _cli_imports(module: str) -> set[str]:
    """The ``wsync._cli`` modules that ``wsync/_cli/<module>.py`` imports, by their short name."""
    tree = ast.parse(Path(PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.startswith("wsync._cli."):
                found.add(node.module.removeprefix("wsync._cli."))
            elif node.module == "wsync._cli":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.removeprefix("wsync._cli.")
                for alias in node.names if alias.name.startswith("wsync._cli.")
            )
    return found


class TestLayout:
    def test_the_package_holds_main_console_and_one_module_per_command(self) -> None:
        """wsync/_cli/ is __init__, _main, _console and one module per command."""
        modules = {p.stem for p in PACKAGE.glob("*.py")}
        assert modules == {"__init__", "_main", "_console", *COMMANDS}

    def test_the_console_module_is_a_leaf(self) -> None:
        """_console imports no other module of the command line."""
        assert _cli_imports("_console") == set()

    @pytest.mark.parametrize("command", COMMANDS)
    def test_a_command_imports_only_the_console(self, command: str) -> None:
        """A command module imports _console and no other command (no cycle is possible)."""
        assert _cli_imports(command) <= {"_console"}

    def test_the_entry_point_is_the_packages_main(self) -> None:
        """``wsync._cli:main``, the console script's target, is _main.main."""
        from wsync._cli import _main

        assert main is _main.main
