"""``mxfed doctor``: why federation with a server does or does not work.

``diagnosis`` runs the checks (through the federation client, its resolver
and block lists), ``probes`` connects to each address and reads its TLS,
``certificates`` describes certificates, ``judgements`` turns findings into
causes and words, ``report`` holds the vocabulary (steps, outcomes, causes,
the verdict), ``sources`` asks the sender and events services, and
``servicer`` is the ``Keys.QueryFederationReport`` RPC. docs/doctor.md is
the operator's guide.
"""
