"""Membership handshakes, hosted by the events process as the ``Membership`` gRPC service.

* :mod:`.templates` — make_join / make_leave / make_knock (resident side);
* :mod:`.resident` — send_join / send_leave / send_knock, invites we send;
* :mod:`.join`, :mod:`.leave`, :mod:`.knock` — local users joining, leaving and knocking
  on rooms other servers host, on what :mod:`.remote_rooms` gives them all;
* :mod:`.received_invites` — invites other servers send to local users;
* :mod:`.servicer` — the gRPC layer and ``setup``.
"""
