"""A bridge skeleton: mirrors one mxfed room and a line-based chat, both ways.

The chat is either stdin/stdout or a TCP line server (``nc``/``telnet``
clients, one line per message)::

    .venv/bin/python examples/bridge.py '#lobby:<our server>' --stdio
    .venv/bin/python examples/bridge.py '!room:server' --tcp 127.0.0.1:7000

Sender mapping: each chat user appears in the room as a puppet, a local user
``@chat_<nick>:<our server>`` that the bridge joins to the room on first use;
in TCP mode a connection names itself with its first line (its nick); on
stdio the nick is ``--nick``. Room messages (from anyone but the puppets)
reach the chat as ``<display name or user id> text``; TCP clients also see
each other's lines. The room must be one the puppets may join (public, or
invite them). Runs against ``./bootstrap run`` with the same configuration;
``--actor NAME`` calls with an actor certificate instead of the operator's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mxfed.client import Client, Event, MatrixError  # noqa: E402

log = logging.getLogger("bridge")
PUPPET_PREFIX = "chat_"
_NICK = re.compile(r"[^a-z0-9._=-]")


class Bridge:
    def __init__(self, client: Client, room: str) -> None:
        self.client = client
        self.room = room
        self.room_id = ""
        self._joined: set[str] = set()
        self._names: dict[str, str] = {}
        # Where room messages go: one writer per chat connection (or stdout).
        self.outputs: set[Callable[[str], Awaitable[None]]] = set()

    def puppet(self, nick: str) -> str:
        localpart = PUPPET_PREFIX + (_NICK.sub("_", nick.lower()) or "anon")
        return f"@{localpart}:{self.client.server_name}"

    def is_puppet(self, user_id: str) -> bool:
        return user_id.startswith(f"@{PUPPET_PREFIX}") and user_id.endswith(
            f":{self.client.server_name}"
        )

    async def start(self) -> None:
        self.room_id = await self.client.resolve_room(self.room)

    # chat → room
    async def from_chat(self, nick: str, text: str) -> None:
        user_id = self.puppet(nick)
        if user_id not in self._joined:
            joined = await self.client.join(user_id, self.room_id, content={"displayname": nick})
            self.room_id = joined.room_id
            self._joined.add(user_id)
        await self.client.send_message(self.room_id, user_id, text)

    # room → chat
    async def to_chat(self, after: int) -> None:
        async for item in self.client.stream(room_id=self.room_id, after=after):
            event = item.event
            if event is None or not self._is_message(event):
                continue
            line = f"<{await self.name_of(event.sender)}> {event.body}"
            for output in list(self.outputs):
                await output(line)

    def _is_message(self, event: Event) -> bool:
        return (
            event.type == "m.room.message"
            and event.body is not None
            and not self.is_puppet(event.sender)
        )

    async def name_of(self, user_id: str) -> str:
        if user_id not in self._names:
            try:
                profile = await self.client.profile(user_id, "displayname")
            except MatrixError:
                profile = None
            name = (profile or {}).get("displayname")
            self._names[user_id] = name if isinstance(name, str) and name else user_id
        return self._names[user_id]


async def run_stdio(bridge: Bridge, nick: str) -> None:
    loop = asyncio.get_running_loop()

    async def write(line: str) -> None:
        print(line, flush=True)

    bridge.outputs.add(write)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while raw := await reader.readline():
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.strip():
            await bridge.from_chat(nick, line)


async def run_tcp(bridge: Bridge, host: str, port: int) -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def write(line: str) -> None:
            writer.write(line.encode() + b"\n")
            await writer.drain()

        try:
            writer.write(b"nick?\n")
            nick = (await reader.readline()).decode().strip() or "anon"
            bridge.outputs.add(write)
            await write(f"hello {nick}")  # from now on, this connection gets every line
            while raw := await reader.readline():
                text = raw.decode(errors="replace").rstrip("\r\n")
                if not text:
                    continue
                for output in list(bridge.outputs - {write}):
                    await output(f"<{nick}> {text}")
                await bridge.from_chat(nick, text)
        except (ConnectionError, MatrixError) as error:
            log.warning("chat session ended: %s", error)
        finally:
            bridge.outputs.discard(write)
            writer.close()

    server = await asyncio.start_server(session, host, port)
    bound = server.sockets[0].getsockname()[1]  # port 0: the one the system chose
    print(f"bridge listening on {host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("room", help="room id or alias")
    chat = parser.add_mutually_exclusive_group(required=True)
    chat.add_argument("--stdio", action="store_true", help="the chat is stdin/stdout")
    chat.add_argument("--tcp", metavar="HOST:PORT", help="serve the chat on this TCP address")
    parser.add_argument("--nick", default="console", help="the stdio user's nick")
    parser.add_argument("--config", "-c", help="mxfed's YAML config (default: MXFED_CONFIG)")
    parser.add_argument("--actor", help="call as this actor (`mxfed actors add NAME`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async with Client.from_config(args.config, actor=args.actor) as client:
        bridge = Bridge(client, args.room)
        await bridge.start()
        after = await client.latest_position(bridge.room_id) or -1
        if args.stdio:
            chat = run_stdio(bridge, args.nick)
        else:
            host, _, port = args.tcp.rpartition(":")
            chat = run_tcp(bridge, host or "127.0.0.1", int(port))
        print(f"bridging {bridge.room_id}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        tasks = [
            asyncio.create_task(bridge.to_chat(after)),
            asyncio.create_task(chat),
            asyncio.create_task(stop.wait()),
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
