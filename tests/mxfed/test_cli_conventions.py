"""The CLI's conventions, over every command: ``--json`` everywhere, one spelling of flags,
aliases as a newcomer types them, and errors that say what to check."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mxfed.cli import build_parser
from mxfed.commands.rooms import CommandError, alias_localpart
from mxfed.protogen import REPO_ROOT

# Commands whose output is not a report: the server itself, and a sample config file.
WITHOUT_JSON = {"run", "config sample"}


def _leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        return {" ".join(path): parser}
    for name, sub in subcommands[0].choices.items():
        found.update(_leaf_commands(sub, (*path, name)))
    return found


def _long_options(parser: argparse.ArgumentParser) -> list[list[str]]:
    return [
        [o for o in action.option_strings if o.startswith("--")]
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def test_every_command_that_reports_takes_json() -> None:
    commands = _leaf_commands(build_parser())
    assert len(commands) > 30
    missing = [
        name
        for name, parser in commands.items()
        if name not in WITHOUT_JSON and ["--json"] not in _long_options(parser)
    ]
    assert missing == []


def test_flags_have_one_spelling() -> None:
    for name, parser in _leaf_commands(build_parser()).items():
        for options in _long_options(parser):
            primary = options[0]
            # Lower-case words joined by hyphens; an older spelling may follow as an alias.
            assert primary == primary.lower() and "_" not in primary, (name, primary)
    # Every command that acts as a local user takes --user (some also a more exact name).
    for name, parser in _leaf_commands(build_parser()).items():
        acting = [o for o in _long_options(parser) if {"--sender", "--creator"} & set(o)]
        for options in acting:
            assert "--user" in options, (name, options)
    upload = _leaf_commands(build_parser())["devices upload"]
    profile = _leaf_commands(build_parser())["profile set"]
    for parser in (upload, profile):
        assert ["--display-name", "--displayname"] in _long_options(parser)


@pytest.mark.parametrize(
    ("given", "localpart"),
    [
        ("#full:localhost:8448", "full"),
        ("full", "full"),
        ("#full", "full"),
        ("", ""),
        ("#ünïcode.room-1:localhost:8448", "ünïcode.room-1"),
    ],
)
def test_an_alias_is_accepted_as_a_whole_alias_or_a_localpart(given: str, localpart: str) -> None:
    assert alias_localpart(given, "localhost:8448") == localpart


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("#full:other.example", "is on other.example"),
        ("#full:localhost", "is on localhost;"),
        ("full:localhost:8448", "give #NAME:localhost:8448 or just NAME"),
        ("#:localhost:8448", "is not a valid alias"),
        ("#" + "x" * 260, "is not a valid alias"),
        ("nul\x00", "is not a valid alias"),
    ],
)
def test_a_wrong_alias_is_refused_saying_what_to_give(given: str, says: str) -> None:
    with pytest.raises(CommandError) as refused:
        alias_localpart(given, "localhost:8448")
    assert str(refused.value).startswith("M_INVALID_PARAM: --alias ")
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("command", "service"),
    [
        (["send", "!room:localhost:8448", "hi", "--sender", "@a:localhost:8448"], "events"),
        (["history", "#lobby:localhost:8448"], "events"),
        (["join", "#lobby:localhost:8448", "--user", "@a:localhost:8448"], "events"),
        (["keys", "show"], "keys"),
        (["destinations"], "sender"),
        (["backfill", "!room:localhost:8448"], "backfill"),
        (["media", "info", "mxc://localhost:8448/abc"], "media"),
        # Accounts, at the keys address while the keys process serves it.
        (["profile", "get", "@a:localhost:8448"], "accounts"),
    ],
)
def test_a_service_that_does_not_answer_says_what_to_check(
    command: list[str], service: str | None, tmp_path: Path, refused_port: int
) -> None:
    address = f"127.0.0.1:{refused_port}"
    config = tmp_path / "mxfed.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path),
                "internal_tls": False,
                "log_level": "ERROR",
                **{f"{name}_address": address for name in ("keys", "events", "sender")},
                **{f"{name}_address": address for name in ("backfill", "media")},
            }
        )
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
    outcome = subprocess.run(
        [sys.executable, "-m", "mxfed.cli", *command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert outcome.returncode == 1, outcome.stderr
    assert outcome.stdout == ""
    [line] = [line for line in outcome.stderr.splitlines() if "UNAVAILABLE" in line]
    who = f"the {service} service at {address}" if service else "a service of mxfed"
    assert f"UNAVAILABLE: {who} does not answer: is `./bootstrap run`" in line
    assert "Traceback" not in outcome.stderr


def _readme_commands() -> dict[str, str]:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("| command | required | what it does |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def test_the_readme_lists_every_command_with_what_it_requires() -> None:
    rows = _readme_commands()
    commands = _leaf_commands(build_parser())
    assert set(rows) == set(commands)
    for name, parser in commands.items():
        required = rows[name].split()
        for action in parser._actions:
            if action.option_strings and action.required:
                assert set(action.option_strings) & set(required), (name, action.option_strings)
        positionals = [
            a
            for a in parser._actions
            if not a.option_strings and a.nargs not in ("?", "*") and a.default is None
        ]
        # Positionals: the upper-case words that are not a flag's value.
        words = [
            word
            for before, word in zip(["", *required], required, strict=False)
            if word.isupper() and not before.startswith("-")
        ]
        assert len(words) == len(positionals), (name, words)
