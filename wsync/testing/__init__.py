"""A wsync protocol server for tests and demos: ``ProtocolServer`` and what it records.

Needs the ``wsync-client[server]`` extra (websockets 13.0 or later). Example::

    from wsync.testing import ProtocolServer

    with ProtocolServer(handler=lambda content, client_id: content.upper()) as server:
        ...  # connect a client to server.url
        assert server.wait_for_received(1)
        server.drop_connections()  # a network loss, to test reconnection

Faults, each a method of ``ProtocolServer`` documented there: network losses
(``drop_connections``, ``restart``, ``stall``), heartbeat (``pause_pongs``), handshakes
(``reject_handshakes``, ``mismatch_handshakes``, ``refuse_upgrades``, ``close_after_confirm``,
``require_token``), responses (``response_delay``, ``hold_responses``), poison messages
(``drop_on``, and ``max_message_size`` for a close with 1009) and raw frames (``send_raw``).
"""

from __future__ import annotations

from wsync.testing._server import ProtocolServer
from wsync.testing._support import Handler, MessageFilter, Received, UpgradeRequest

__all__ = ["Handler", "MessageFilter", "ProtocolServer", "Received", "UpgradeRequest"]
