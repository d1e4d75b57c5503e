"""Membership handshakes, hosted by the events process as the ``Membership`` gRPC service.

* :mod:`.templates` — make_join / make_leave / make_knock (resident side);
* :mod:`.resident` — send_join / send_leave / send_knock, invites we send;
* :mod:`.joining` — local users joining/leaving/knocking remote rooms, invites we receive;
* :mod:`.servicer` — the gRPC layer and ``setup``.
"""
