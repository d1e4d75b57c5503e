"""Heroes of a nameless room (m.heroes), as send_join's omit_members keeps them."""

from __future__ import annotations

from matrix_protocol.room_summary import Member, heroes, room_is_named


def test_heroes_are_the_first_five_joined_or_invited_in_stream_order_without_the_user() -> None:
    members = [
        Member("@zed:a", "join", 1),
        Member("@me:b", "join", 2),
        Member("@left:a", "leave", 3),
        Member("@amy:a", "invite", 4),
        Member("@ban:a", "ban", 5),
        *(Member(f"@u{i}:a", "join", 10 + i) for i in range(5)),
        Member("@outlier:a", "join", None),
    ]
    # Stream order, not alphabetical; the user asked for is never a hero.
    assert heroes(members, "@me:b") == ["@zed:a", "@amy:a", "@u0:a", "@u1:a", "@u2:a"]


def test_heroes_fall_back_to_left_and_banned_members() -> None:
    members = [Member("@me:b", "join", 1), Member("@b:a", "ban", 3), Member("@a:a", "leave", 2)]
    assert heroes(members, "@me:b") == ["@a:a", "@b:a"]
    assert heroes([], "@me:b") == []


def test_a_room_is_named_by_a_non_empty_name_or_alias() -> None:
    assert room_is_named({"name": "x"}, None)
    assert room_is_named(None, {"alias": "#a:b"})
    assert not room_is_named({"name": ""}, {"alias": ""})
    assert not room_is_named(None, None)
