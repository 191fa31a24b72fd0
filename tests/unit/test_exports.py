"""The public face of ``wsync``: exactly the documented public names, each importable."""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import re

import pytest

import wsync

# The public names of the API reference (docs/api.rst), OutboxError and status_widget included.
PUBLIC_NAMES = {
    "Client",
    "MessageFuture",
    "ConnectionState",
    "Status",
    "Response",
    "ServerError",
    "Backoff",
    "Stats",
    "SQLiteOutbox",
    "WsyncError",
    "ConnectError",
    "ConnectTimeout",
    "DeliveryError",
    "HandshakeError",
    "ResponseTimeout",
    "ClientClosed",
    "QueueFull",
    "ProtocolError",
    "OutboxError",
    "status_widget",
}


class TestAll:
    def test_all_is_exactly_the_public_names(self) -> None:
        """wsync.__all__ lists the documented public names and nothing else."""
        assert set(wsync.__all__) - {"__version__"} == PUBLIC_NAMES

    def test_all_has_no_duplicates(self) -> None:
        """Each name appears once in __all__."""
        assert len(wsync.__all__) == len(set(wsync.__all__))

    @pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
    def test_name_resolves(self, name: str) -> None:
        """Every public name is an attribute of wsync, defined inside wsync."""
        obj = getattr(wsync, name)
        assert obj.__module__.split(".")[0] == "wsync"

    def test_star_import_gives_all(self) -> None:
        """`from wsync import *` binds every name in __all__."""
        namespace: dict[str, object] = {}
        exec("from wsync import *", namespace)
        assert set(wsync.__all__) <= namespace.keys()

    @pytest.mark.parametrize(
        "name",
        [
            "WsyncError",
            "ConnectError",
            "ConnectTimeout",
            "HandshakeError",
            "ResponseTimeout",
            "ClientClosed",
            "QueueFull",
            "ServerError",
            "ProtocolError",
            "OutboxError",
        ],
    )
    def test_errors_are_wsync_errors(self, name: str) -> None:
        """Every exported error is a WsyncError."""
        assert issubclass(getattr(wsync, name), wsync.WsyncError)


class TestPackage:
    def test_version(self) -> None:
        """wsync.__version__ is a release string such as 0.1.0 or 0.1.0.dev1."""
        assert isinstance(wsync.__version__, str)
        assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d+)*", wsync.__version__)

    @pytest.mark.parametrize("module", ["wsync.protocol", "wsync.testing"])
    def test_public_modules_import(self, module: str) -> None:
        """The public modules wsync.protocol and wsync.testing import."""
        importlib.import_module(module)

    def test_protocol_server_is_exported(self) -> None:
        """wsync.testing offers ProtocolServer."""
        from wsync.testing import ProtocolServer

        assert callable(ProtocolServer)

    def test_py_typed_is_shipped(self) -> None:
        """The py.typed marker sits beside the package's code."""
        assert importlib.resources.files("wsync").joinpath("py.typed").is_file()

    def test_library_logger_has_no_handler(self) -> None:
        """The 'wsync' logger has no handler, not even a NullHandler: warnings reach stderr."""
        assert logging.getLogger("wsync").handlers == []

    @pytest.mark.parametrize(
        "name", ["ConnectError", "ConnectTimeout", "DeliveryError", "ServerError"]
    )
    def test_errors_say_wsync_as_their_module(self, name: str) -> None:
        """Public exceptions show as wsync.X in tracebacks, not as a private module path."""
        assert getattr(wsync, name).__module__ == "wsync"
