"""The one definition of the IP ranges outbound requests never reach unless allowed.

Every outbound HTTP request mxfed makes (federation, key fetches, identity
servers) goes through the federation client's connector, which refuses
these ranges (``federation_blocked_ip_ranges``, default below) except what
``federation_allowed_ip_ranges`` lets through. Synapse's default
``ip_range_blacklist`` plus "this network", broadcast and reserved space.
Kept free of imports so the configuration can use it.
"""

from __future__ import annotations

DEFAULT_BLOCKED_IP_RANGES: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
)
