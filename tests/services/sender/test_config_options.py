"""The sender's configuration options reach the parts that use them."""

from __future__ import annotations

import pytest

from mxfed.config import load_config


def test_sender_options_have_documented_defaults() -> None:
    config = load_config(environ={})
    assert config.sender_lease_seconds == 12.0
    assert config.sender_catch_up_max_pdus == 500
    assert config.sender_catch_up_events_per_room == 10


def test_sender_options_from_the_environment() -> None:
    config = load_config(
        environ={
            "MXFED_SENDER_LEASE_SECONDS": "30",
            "MXFED_SENDER_CATCH_UP_MAX_PDUS": "2000",
            "MXFED_SENDER_CATCH_UP_EVENTS_PER_ROOM": "3",
        }
    )
    assert config.sender_lease_seconds == 30.0
    assert config.sender_catch_up_max_pdus == 2000
    assert config.sender_catch_up_events_per_room == 3


def test_a_lease_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValueError):
        load_config(environ={"MXFED_SENDER_LEASE_SECONDS": "4"})
