"""Every example runs and exits 0: the scripts as subprocesses, the notebook in a real kernel."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from wsync.testing import ProtocolServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
SCRIPT_TIMEOUT = 30.0
KERNEL_TIMEOUT = 60
# jupyter_client waits this long for a kernel to exit after a shutdown request, then
# terminates it (at half) and kills it. A kernel that exits by itself is far quicker.
SHUTDOWN_WAIT = 20.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _env(**extra: str) -> dict[str, str]:
    """A child's environment: wsync importable from this checkout."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
    env.update(extra)
    return env


def test_every_example_is_tested() -> None:
    """The examples this module runs are the ones in examples/."""
    assert SCRIPTS == ["callbacks.py", "durable_outbox.py", "legacy_threads.py", "quickstart.py"]
    assert (EXAMPLES / "notebook.ipynb").is_file()


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_against_its_embedded_server(script: str) -> None:
    """With no URL, the example starts its own server and exits 0."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, env=_env(), cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_against_a_given_url(script: str, server: ProtocolServer) -> None:
    """With a URL argument, the example uses that server and exits 0."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), server.url],
        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, env=_env(), cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.received, "the example did not talk to the given server"


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Pin kernel ``python3`` to this interpreter, whatever kernelspecs the user has installed.

    A fresh venv already resolves ``python3`` to its own interpreter (ipykernel ships the
    spec with ``python`` as argv[0], which jupyter_client replaces by ``sys.executable``);
    JUPYTER_PATH comes before the user's directory, so a stale user-wide spec cannot win.
    """
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (wsync tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(spec.parent.parent))
    return _env(JUPYTER_PATH=str(spec.parent.parent))


def _outputs(nb: Any) -> str:
    return json.dumps([cell.get("outputs", []) for cell in nb.cells])


def test_notebook_runs_in_a_real_kernel(kernel_env: dict[str, str]) -> None:
    """examples/notebook.ipynb runs top to bottom in a python3 kernel, asserts included."""
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    env = {k: v for k, v in kernel_env.items() if k != "WSYNC_URL"}
    client = NotebookClient(
        nb, timeout=KERNEL_TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute(env=env)
    outputs = _outputs(nb)
    assert "hello from a notebook" in outputs
    if importlib.util.find_spec("ipywidgets") is not None:
        assert "application/vnd.jupyter.widget-view+json" in outputs  # the status widget
    assert "wsync.Client" in outputs  # the client's HTML view
    assert '"output_type": "error"' not in outputs


def test_notebook_runs_without_ipywidgets(kernel_env: dict[str, str], tmp_path: Path) -> None:
    """Without ipywidgets the notebook shows the HTML view, says how to get the live widget,
    and raises no error."""
    blocker = tmp_path / "blocked"
    (blocker / "ipywidgets").mkdir(parents=True)
    (blocker / "ipywidgets" / "__init__.py").write_text(
        'raise ImportError("ipywidgets is blocked for this test")\n'
    )
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    env = {k: v for k, v in kernel_env.items() if k != "WSYNC_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), env.get("PYTHONPATH")]))
    client = NotebookClient(
        nb, timeout=KERNEL_TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute(env=env)
    outputs = _outputs(nb)
    assert "wsync.Client" in outputs
    assert "wsync-client[notebook]" in outputs
    assert "application/vnd.jupyter.widget-view+json" not in outputs
    assert '"output_type": "error"' not in outputs


def test_notebook_runs_against_a_given_url(
    kernel_env: dict[str, str], server: ProtocolServer
) -> None:
    """With WSYNC_URL set, the notebook talks to that server."""
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=KERNEL_TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute(env={**kernel_env, "WSYNC_URL": server.url})
    assert [m.content for m in server.received] == ["hello from a notebook", "still there?"]


LEAKY_CELLS = [
    "import threading, wsync\n"
    "def readers():\n"
    "    return sum(t.name.startswith('wsync-reader-') for t in threading.enumerate())",
    # Run twice, like a cell run again: the first client is forgotten, never closed.
    "client = wsync.Client(URL, client_id='rerun')\nstate = client.connect(timeout=10)",
    "client = wsync.Client(URL, client_id='rerun')\nstate = client.connect(timeout=10)",
    # The forgotten client was garbage-collected and closed: one reader thread is left.
    "import gc, time\n"
    "gc.collect()\n"
    "deadline = time.monotonic() + 10\n"
    "while readers() > 1 and time.monotonic() < deadline:\n"
    "    time.sleep(0.05)\n"
    "assert readers() == 1, readers()\n"
    "print('one client left')",
    # The second client stays open: the kernel's shutdown must close it, not hang on it.
    "print(client.state.status.value)",
]


def test_kernel_shutdown_with_an_open_client_does_not_hang(
    kernel_env: dict[str, str], server: ProtocolServer
) -> None:
    """A forgotten client is closed when collected; an open one does not hold the kernel up."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"URL = {server.url!r}"),
        *(nbformat.v4.new_code_cell(source) for source in LEAKY_CELLS),
    ])
    last_cell_done: list[float] = []
    client = NotebookClient(
        nb, timeout=KERNEL_TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
        on_cell_executed=lambda **_: last_cell_done.append(time.monotonic()),
    )
    client.km = client.create_kernel_manager()
    client.km.shutdown_wait_time = SHUTDOWN_WAIT
    client.owns_km = True  # execute() shuts the kernel down at the end, as it would its own
    client.execute(env=kernel_env)
    shutdown = time.monotonic() - last_cell_done[-1]

    outputs = _outputs(nb)
    assert "one client left" in outputs
    assert "confirmed" in outputs
    # Well before jupyter_client would have to terminate it (SHUTDOWN_WAIT / 2).
    assert shutdown < SHUTDOWN_WAIT / 4, f"kernel shutdown took {shutdown:.1f} s"
    assert server.wait_until(lambda: server.live_connections == 0, timeout=5)
    assert server.connections_total == 2


class TestStatusWidget:
    """``wsync._notebook.status_widget`` in-process (an ipywidget needs no kernel to exist)."""

    def test_redraws_on_state_changes_and_responses(self, server: ProtocolServer) -> None:
        """The widget follows the client: disconnected, confirmed, final counters, closed."""
        import wsync
        from wsync import status_widget

        seen: list[wsync.Status] = []
        client = wsync.Client(server.url, on_state_change=lambda s: seen.append(s.status))
        try:
            widget = status_widget(client)
            assert "disconnected" in widget.value
            client.connect(timeout=5)
            for n in range(5):
                client.send(f"m{n}")
            assert client.flush(timeout=5)
            assert "confirmed" in widget.value
            assert "received 5" in widget.value  # the last redraw came once nothing was left
        finally:
            client.close()
        assert "closed" in widget.value
        assert seen[-1] is wsync.Status.CLOSED  # the client's own callback still runs

    def test_holds_the_client_weakly(self, server: ProtocolServer) -> None:
        """A widget kept in an output does not keep a forgotten client alive."""
        import gc
        import weakref

        import wsync
        from wsync import status_widget

        client = wsync.Client(server.url)
        client.connect(timeout=5)
        widget = status_widget(client)
        ref = weakref.ref(client)
        del client
        gc.collect()
        assert ref() is None  # collected, and so closed: the thread check sees no leftovers
        assert widget.value

    def test_without_ipywidgets_says_what_to_install(
        self, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No ipywidgets: an ImportError naming the extra."""
        import wsync
        from wsync import status_widget

        monkeypatch.setitem(sys.modules, "ipywidgets", None)
        client = wsync.Client(server.url)
        try:
            with pytest.raises(ImportError, match=r"wsync-client\[notebook\]"):
                status_widget(client)
        finally:
            client.close()
