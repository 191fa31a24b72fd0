"""The process-lifecycle adapter (wsync._exit) and the module graph it belongs to."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import wsync

PACKAGE = Path(wsync.__file__).parent


class TestThreadingContract:
    def test_register_atexit_still_exists(self) -> None:
        """threading._register_atexit, which wsync._exit relies on, is still there: a Python
        release that drops it fails here, not at some user's exit."""
        assert callable(getattr(threading, "_register_atexit", None))

    def test_hooks_run_newest_first_before_non_daemon_threads_are_joined(self) -> None:
        """Functions registered there run before the interpreter joins non-daemon threads,
        the newest first, which is why wsync registers after concurrent.futures.thread."""
        script = textwrap.dedent(
            """
            import threading
            release = threading.Event()
            worker = threading.Thread(target=lambda: release.wait(30))  # non-daemon
            worker.start()
            threading._register_atexit(lambda: print("old", flush=True))
            threading._register_atexit(lambda: (print("new", flush=True), release.set()))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=20
        )
        assert result.stdout.split() == ["new", "old"]

    def test_wsync_runs_before_a_thread_pool_joins_its_workers(self) -> None:
        """After import wsync, ThreadPoolExecutor's exit hook is registered before wsync's,
        so wsync's runs first."""
        script = textwrap.dedent(
            """
            import threading, wsync, concurrent.futures.thread as pool

            def target(hook):  # a partial (3.10-3.12) or a lambda around the function (3.13)
                func = getattr(hook, "func", None)
                for cell in getattr(hook, "__closure__", None) or ():
                    if func is None and callable(cell.cell_contents):
                        func = cell.cell_contents
                return getattr(func, "__name__", "")

            names = [target(h) for h in threading._threading_atexits]
            print(names.index("_python_exit") < names.index("_close_all_at_exit"))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=20
        )
        assert result.stdout.strip() == "True", result.stderr


def _imports(path: Path) -> set[str]:
    """The wsync modules ``path`` imports at run time (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.startswith("wsync"):
                    found.add(child.module)
                    for alias in child.names:
                        found.add(f"{child.module}.{alias.name}")
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("wsync"))
            visit(child)

    visit(tree)
    return found


class TestModuleGraph:
    def test_no_import_cycle(self) -> None:
        """No wsync module imports, directly or not, a module that imports it back."""
        modules: dict[str, Path] = {}
        for path in PACKAGE.rglob("*.py"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
        graph = {
            name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()
        }
        # Packages re-export their modules: an edge into a package's __init__ is not a cycle
        # through its own submodules.
        state: dict[str, int] = {}
        stack: list[str] = []

        def walk(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for nxt in sorted(graph[node]):
                if node.startswith(nxt + ".") or nxt.startswith(node + "."):
                    continue
                if state.get(nxt) == 1:
                    raise AssertionError(" -> ".join([*stack[stack.index(nxt):], nxt]))
                if nxt not in state:
                    walk(nxt)
            stack.pop()
            state[node] = 2

        for name in sorted(graph):
            if name not in state:
                walk(name)

    def test_every_module_says_its_job(self) -> None:
        """Every module has a docstring (its one job, and what it must not do)."""
        for path in PACKAGE.rglob("*.py"):
            assert ast.get_docstring(ast.parse(path.read_text())), path


class TestSignalsReachTheMainThread:
    def test_wsync_threads_are_born_with_user_signals_blocked(self) -> None:
        """A thread started by start_thread blocks SIGINT and SIGTERM (the kernel then gives a
        Ctrl-C to the main thread, never to a wsync thread); the starter's mask is unchanged."""
        import signal

        from wsync import _exit

        if not hasattr(signal, "pthread_sigmask"):
            return
        before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        seen: list[set[int]] = []
        thread = threading.Thread(
            target=lambda: seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, ())))
        )
        assert _exit.start_thread(thread)
        thread.join(5)
        assert seen and {signal.SIGINT, signal.SIGTERM} <= seen[0]
        assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == before
        assert signal.SIGINT not in before
