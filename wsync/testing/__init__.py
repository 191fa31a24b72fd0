"""A wsync protocol server for tests and demos: ``ProtocolServer`` and what it records.

Needs the ``wsync[server]`` extra (websockets). Example::

    from wsync.testing import ProtocolServer

    with ProtocolServer(handler=lambda content, client_id: content.upper()) as server:
        ...  # connect a client to server.url
        assert server.wait_for_received(1)
        server.drop_connections()  # a network loss, to test reconnection
"""

from __future__ import annotations

from wsync.testing._server import ProtocolServer
from wsync.testing._support import Handler, Received, UpgradeRequest

__all__ = ["Handler", "ProtocolServer", "Received", "UpgradeRequest"]
