"""An echo bot on mxfed: joins the rooms it is invited to and answers every message.

Run it next to ``./bootstrap run`` (same directory, same configuration)::

    .venv/bin/python examples/echo_bot.py                   # as @echo:<our server>
    .venv/bin/python examples/echo_bot.py --actor echo-bot  # `mxfed actors add echo-bot` first

Invite ``@echo:<our server>`` to a room, on mxfed or on any other server
(Synapse...), and say something: it answers ``echo: <what you said>``.

Restartable: it keeps its stream position in ``--state`` (a file), so after a
restart (even ``kill -9``) it goes on where it stopped, without missing a
message; a message it was answering when it died is answered again with
the same transaction id, which mxfed recognises, so nobody gets two answers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mxfed.client import Client, Event, FilePosition, MatrixError  # noqa: E402

log = logging.getLogger("echo_bot")
INVITE_POLL_SECONDS = 0.5


class EchoBot:
    def __init__(self, client: Client, user_id: str, position: FilePosition) -> None:
        self.client = client
        self.user_id = user_id
        self.position = position

    async def run(self) -> None:
        await asyncio.gather(self.accept_invites(), self.answer())

    async def accept_invites(self) -> None:
        """Join every room we are invited to (invites to rooms on other servers
        arrive out of band: they are polled; invites in our rooms come as events)."""
        while True:
            try:
                for invite in await self.client.invites(self.user_id):
                    if invite.membership == "invite":
                        await self.join(invite.room_id, [invite.via_server])
            except MatrixError as error:
                log.warning("listing invites failed: %s", error)
            await asyncio.sleep(INVITE_POLL_SECONDS)

    async def join(self, room_id: str, servers: list[str]) -> None:
        try:
            joined = await self.client.join(self.user_id, room_id, servers=servers)
            log.info("joined %s", joined.room_id)
        except MatrixError as error:
            log.warning("cannot join %s: %s", room_id, error)

    async def answer(self) -> None:
        async for item in self.client.stream(position=self.position):
            if item.event is not None:
                await self.handle(item.event)

    async def handle(self, event: Event) -> None:
        if event.type == "m.room.member" and event.state_key == self.user_id:
            if event.content.get("membership") == "invite":
                await self.join(event.room_id, [])
            return
        if event.type != "m.room.message" or event.sender == self.user_id or event.body is None:
            return
        members = await self.client.joined_members(event.room_id)
        if self.user_id not in members:
            log.info("not answering %s: not joined to %s", event.event_id, event.room_id)
            return
        # The txn id makes the answer idempotent: answering again after a
        # restart returns the first answer instead of sending a second one.
        sent = await self.client.send_message(
            event.room_id,
            self.user_id,
            f"echo: {event.body}",
            msgtype="m.notice",
            txn_id=f"echo-{event.event_id}",
            extra={"m.relates_to": {"m.in_reply_to": {"event_id": event.event_id}}},
        )
        log.info("answered %s in %s with %s", event.event_id, event.room_id, sent.event_id)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="mxfed's YAML config (default: MXFED_CONFIG)")
    parser.add_argument("--actor", help="call as this actor (`mxfed actors add NAME`)")
    parser.add_argument("--user", default="echo", help="the bot's localpart or user id")
    parser.add_argument("--state", default="echo_bot.position", help="stream position file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    client = Client.from_config(args.config, actor=args.actor)
    user_id = args.user if args.user.startswith("@") else f"@{args.user}:{client.server_name}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with client:
        bot = EchoBot(client, user_id, FilePosition(args.state))
        print(f"echo bot {user_id} running", flush=True)
        task = asyncio.create_task(bot.run())
        done, _ = await asyncio.wait(
            [task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        task.cancel()
        if task in done and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
