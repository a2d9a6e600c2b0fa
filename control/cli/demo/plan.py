"""What the demo builds and sends: the demo account's Pools and their Bridges, where
its mail goes, and the options of one run."""

from __future__ import annotations

from dataclasses import dataclass

SERVER_HOSTNAME = "mta1.demo.poolmta.test"
ZONE = "US-1"
ACCOUNT = "acme"
SENDER_DOMAIN = "acme.example"
RECIPIENT_DOMAIN = "example.net"
# The sink's default rules: bounce* answers 550, defer* 451 twice and then 250.
BOUNCE_LOCAL_PART = "bounce"
DEFER_LOCAL_PART = "defer"
# The two ways mail reaches a Bridge: SMTP AUTH, or the REST Bridge (POST /v1/messages).
SMTP = "SMTP"
REST = "REST"
# What marks a message sent over REST in its Message-ID (`<n.tag.rest@acme.example>`),
# so the destination's log tells the channels apart.
REST_MESSAGE_ID_MARK = ".rest@"


@dataclass(frozen=True)
class PoolPlan:
    """One Pool of the demo account and the Bridge that exposes it.

    share: the part of the messages sent through this Pool's Bridge.
    """

    label: str
    tag: str
    feed_type: str
    addresses: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    bridge: str
    share: float

    @property
    def sender(self) -> str:
        """The envelope sender of the Bridge's mail (`promo@acme.example` for `promo-app`)."""
        return f"{self.bridge.split('-')[0]}@{SENDER_DOMAIN}"


DEMO_POOLS = (
    PoolPlan("acme-promotional", "promo", "newsletter", ("127.0.0.2", "127.0.0.3", "127.0.0.4"),
             (("X-Brand", "acme"), ("X-Campaign", "black-friday")), "promo-app", 0.60),
    PoolPlan("acme-transactional", "txn", "transactional", ("127.0.0.5", "127.0.0.6"),
             (("X-Brand", "acme"), ("X-Stream", "receipts")), "shop-app", 0.25),
    PoolPlan("acme-drip", "drip", "drip", ("127.0.0.7",),
             (("X-Brand", "acme"), ("X-Journey", "onboarding")), "nurture-app", 0.15),
)


@dataclass(frozen=True)
class DemoOptions:
    """What one run of the demo does (built once from the command line)."""

    messages: int = 3000
    sessions: int = 6
    per_session: int = 25
    # Every `rest_every`-th batch goes through the REST Bridge instead of SMTP.
    rest_every: int = 3
    bounce_share: float = 0.03
    defer_share: float = 0.02
    workers: int = 2
    timeout: float = 120.0
    keep_running: bool = False
    seed: int = 2024
    pools: tuple[PoolPlan, ...] = DEMO_POOLS

    def __post_init__(self) -> None:
        if self.messages < 1:
            raise ValueError("--messages must be at least 1")
        if self.sessions < 1 or self.per_session < 1 or self.workers < 1:
            raise ValueError("--sessions, --per-session and --workers must be at least 1")
        if self.rest_every < 1:
            raise ValueError("rest_every must be at least 1")
        if not 0 <= self.bounce_share + self.defer_share <= 1:
            raise ValueError("bounce and defer shares must add up to at most 1")
        if self.timeout <= 0:
            raise ValueError("--timeout must be positive")
