"""The demo's traffic: a few thousand realistic messages in batches (some to recipients
the sink bounces or defers), sent through the Pools' Bridges over concurrent sessions:
most batches over SMTP with AUTH, every `DemoOptions.rest_every`-th through the REST
Bridge (`channels`), counting what each Pool should then report."""

from __future__ import annotations

import asyncio
import contextlib
import random
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import aiohttp
import aiosmtplib
from rich.progress import Progress

from .channels import RestSender
from .plan import (
    BOUNCE_LOCAL_PART,
    DEFER_LOCAL_PART,
    RECIPIENT_DOMAIN,
    REST,
    REST_MESSAGE_ID_MARK,
    SENDER_DOMAIN,
    SMTP,
    DemoOptions,
    PoolPlan,
)
from .provision import Tenant


@dataclass(frozen=True)
class Message:
    """One message of the plan: the Pool (index into the plan) whose Bridge sends it, over
    `channel`: `data` is the message (MIME); over REST, `document` is it as JSON too."""

    pool: int  # index into the plan
    number: int  # in the plan, from 1
    recipient: str
    data: bytes
    channel: str = SMTP
    document: dict | None = None


@dataclass
class PoolTally:
    """What the demo sent through one Pool's Bridge, and so what StatsService must say."""

    sent: int = 0
    bounce: int = 0
    defer: int = 0
    refused: int = 0
    rest_sent: int = 0  # of `sent`, through the REST Bridge
    rest_bounce: int = 0  # of `bounce`, sent through the REST Bridge

    def count(self, message: Message) -> None:
        """Count `message` as accepted by its Bridge."""
        bounce = message.recipient.startswith(BOUNCE_LOCAL_PART)
        self.sent += 1
        self.bounce += bounce
        self.defer += message.recipient.startswith(DEFER_LOCAL_PART)
        if message.channel == REST:
            self.rest_sent += 1
            self.rest_bounce += bounce

    @property
    def delivered(self) -> int:
        """What StatsService must count delivered: every sent message that does not bounce."""
        return self.sent - self.bounce


_PARAGRAPHS = (
    "Our biggest sale of the year starts now: everything in the store is up to 40% off until Monday "
    "midnight, and members get free express shipping on every order over $25.",
    "We picked a few favourites for you below, based on what you looked at last month. Stock is limited "
    "and the best sizes go first, so do not wait too long if something catches your eye.",
    "Thank you for your order. We have received your payment and your parcel is being packed in our "
    "warehouse; you will get another email with the tracking number as soon as it leaves.",
    "Welcome aboard! Over the next two weeks we will send you a short email every few days with one tip "
    "that helps you get more out of your account, starting with setting up your profile.",
    "You are receiving this email because you signed up at acme.example. You can change which emails you "
    "receive, or unsubscribe from all of them, on your preferences page at any time.",
)

_SUBJECTS = {
    "newsletter": "Black Friday starts now: up to 40% off everything",
    "transactional": "Your acme order #{n} is confirmed",
    "drip": "Day 3: make acme yours in two minutes",
}


def _template(plan: PoolPlan, rng: random.Random) -> dict:
    """One realistic message of the Pool's kind (a few KB, text and HTML) as the REST
    Bridge's JSON message, with placeholders for the recipient and the number."""
    paragraphs = [rng.choice(_PARAGRAPHS) for _ in range(8)]
    text = "\n\n".join(textwrap.fill(p, 72) for p in paragraphs)
    html = "".join(f"<p style=\"font-family:Arial,sans-serif;font-size:15px\">{p}</p>\n" for p in paragraphs)
    return {
        "from": f"acme <{plan.sender}>",
        "to": "__RCPT__",
        "subject": _SUBJECTS.get(plan.feed_type, "News from acme").replace("{n}", "__N__"),
        "headers": {"Message-ID": f"<__N__.{plan.tag}@{SENDER_DOMAIN}>", "Date": "Fri, 28 Nov 2025 09:00:00 +0000",
                    "List-Unsubscribe": f"<https://{SENDER_DOMAIN}/u/__N__>", "X-Mailer": f"acme-{plan.bridge}/2.3"},
        "text": f"Hello,\n\n{text}\n\n-- \nacme, 1 Market Street, Springfield\n",
        "html": f"<!doctype html>\n<html><body>\n<h1>acme</h1>\n{html}</body></html>\n",
    }


def _mime(template: dict) -> bytes:
    """The template as the MIME message an SMTP client sends (what the REST Bridge builds from it)."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = template["from"]
    msg["To"] = template["to"]
    msg["Subject"] = template["subject"]
    for name, value in template["headers"].items():
        msg[name] = value
    msg.set_content(template["text"])
    msg.add_alternative(template["html"], subtype="html")
    return msg.as_bytes()


def _filled(template: dict, recipient: str, n: int) -> dict:
    """The JSON message for recipient `recipient`, number `n`, marked as sent over REST in its Message-ID."""
    def fill(text: str) -> str:
        return text.replace("__RCPT__", recipient).replace("__N__", str(n))

    headers = {name: fill(value) for name, value in template["headers"].items()}
    headers["Message-ID"] = headers["Message-ID"].replace("@", REST_MESSAGE_ID_MARK, 1)
    return {**template, "to": recipient, "subject": fill(template["subject"]), "headers": headers}


def _marked(data: bytes) -> bytes:
    """MIME bytes with the REST mark in the Message-ID, as `_filled` puts it there."""
    start = data.index(b"\nMessage-ID: <") + 1
    at = data.index(b"@", start)
    return data[:at] + REST_MESSAGE_ID_MARK.encode() + data[at + 1:]


def plan_messages(options: DemoOptions) -> tuple[list[list[Message]], list[PoolTally]]:
    """The messages in batches of `per_session` (one SMTP session or REST batch each, one
    Pool each), shuffled, every `rest_every`-th through the REST Bridge, and what each
    Pool should count once they are sent."""
    rng = random.Random(options.seed)
    documents = [_template(plan, rng) for plan in options.pools]
    templates = [_mime(document) for document in documents]
    weights = [plan.share for plan in options.pools]
    by_pool: list[list[Message]] = [[] for _ in options.pools]
    for n in range(1, options.messages + 1):
        index = rng.choices(range(len(options.pools)), weights)[0]
        roll = rng.random()
        if roll < options.bounce_share:
            local = f"{BOUNCE_LOCAL_PART}-{n}"
        elif roll < options.bounce_share + options.defer_share:
            local = f"{DEFER_LOCAL_PART}-{n}"
        else:
            local = f"customer-{n}"
        recipient = f"{local}@{RECIPIENT_DOMAIN}"
        data = templates[index].replace(b"__RCPT__", recipient.encode()).replace(b"__N__", str(n).encode())
        by_pool[index].append(Message(index, n, recipient, data))
    batches = [msgs[i : i + options.per_session] for msgs in by_pool for i in range(0, len(msgs), options.per_session)]
    rng.shuffle(batches)
    for b, batch in enumerate(batches):
        if b % options.rest_every == options.rest_every - 1:
            batches[b] = [Message(m.pool, m.number, m.recipient, _marked(m.data), REST,
                                  _filled(documents[m.pool], m.recipient, m.number)) for m in batch]
    return batches, [PoolTally() for _ in options.pools]


async def send_all(tenant: Tenant, smtp: tuple[str, int], rest: RestSender, batches: list[list[Message]],
                   tallies: list[PoolTally], sessions: int, progress: Progress, task) -> list[str]:
    """Send every batch over `sessions` concurrent sessions, each an authenticated SMTP
    session or, for a REST batch, requests to the REST Bridge (`rest`); count each
    accepted message in `tallies`. Returns what went wrong (empty when nothing did)."""
    queue: asyncio.Queue[list[Message]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    problems: list[str] = []

    def accepted(message: Message, refusal: str | None, bridge: str) -> None:
        if refusal is None:
            tallies[message.pool].count(message)
            progress.advance(task)
        else:
            tallies[message.pool].refused += 1
            problems.append(f"the Bridge {bridge} refused a message to {message.recipient} ({message.channel}): "
                            f"{refusal}")

    async def send_rest(batch: list[Message], provisioned) -> None:
        try:
            refusals = await rest.send(provisioned, batch)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            tallies[batch[0].pool].refused += len(batch)
            problems.append(f"REST requests through the Bridge {provisioned.plan.bridge} failed: {exc!r}")
            return
        for message, refusal in zip(batch, refusals, strict=True):
            accepted(message, refusal, provisioned.plan.bridge)

    async def send_smtp(batch: list[Message], provisioned) -> None:
        sender = provisioned.plan.sender
        client = aiosmtplib.SMTP(hostname=smtp[0], port=smtp[1], start_tls=False, timeout=30)
        handled = 0
        try:
            await client.connect()
            await client.login(provisioned.bridge.username, provisioned.secret)
            for message in batch:
                try:
                    await client.sendmail(sender, [message.recipient], message.data)
                except aiosmtplib.SMTPResponseException as exc:
                    accepted(message, f"{exc.code} {exc.message}", provisioned.plan.bridge)
                else:
                    accepted(message, None, provisioned.plan.bridge)
                handled += 1
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            tallies[batch[0].pool].refused += len(batch) - handled
            problems.append(f"an SMTP session through the Bridge {provisioned.plan.bridge} failed after "
                            f"{handled} of {len(batch)} messages: {exc}")
        finally:
            client.close()

    async def session_loop() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            provisioned = tenant.pools[batch[0].pool]
            await (send_rest if batch[0].channel == REST else send_smtp)(batch, provisioned)

    await asyncio.gather(*(session_loop() for _ in range(sessions)))
    return problems


async def send_with_progress(tenant: Tenant, smtp: tuple[str, int], rest: RestSender, batches: list[list[Message]],
                             tallies: list[PoolTally], sessions: int, progress: Progress,
                             check: Callable[[], None]) -> list[str]:
    """`send_all`, with a progress bar showing the rate; `check` is called while it
    runs and raises to stop it (a part of the stack died). Returns what went wrong."""
    task = progress.add_task("Sending through the Bridges", total=sum(map(len, batches)), rate="")
    started = time.monotonic()
    sending = asyncio.create_task(send_all(tenant, smtp, rest, batches, tallies, sessions, progress, task))
    while not sending.done():
        await asyncio.wait({sending}, timeout=0.25)
        done = sum(t.sent for t in tallies)
        progress.update(task, rate=f"{done / max(time.monotonic() - started, 1e-3):,.0f} msg/s")
        if not sending.done():
            check()
    return sending.result()
