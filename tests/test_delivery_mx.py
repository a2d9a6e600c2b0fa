"""Destinations from DNS: MX lookup through dnspython against a tiny DNS server
on loopback (`--dns-server`), the sink as every mail server (`--mx-port`).

MX by preference, the next host when one refuses the connection, the implicit
MX (no MX record: the domain's own address), a null MX and NXDOMAIN bounced at
once, a failing DNS server and a host without an IPv4 address deferred."""

from __future__ import annotations

from tests.dataplane_support import (
    events_of,
    make_bridge,
    make_pool,
    make_snapshot,
    message,
    publish,
    send_all,
)
from tests.dns_support import DnsStub
from tests.support import wait_until

SERVER = 7
SECRET = "s3cret"
IP = "127.0.0.17"

ZONE = {
    ("mx.test", "MX"): ["10 mail.mx.test."],
    ("mail.mx.test", "A"): ["127.0.0.1"],
    ("pref.test", "MX"): ["20 mail.mx.test.", "5 dead.pref.test."],
    ("dead.pref.test", "A"): ["127.0.0.99"],  # nothing listens there: refused
    ("implicit.test", "A"): ["127.0.0.1"],
    ("nullmx.test", "MX"): ["0 ."],
    ("v6only.test", "MX"): ["10 six.v6only.test."],
    ("six.v6only.test", "AAAA"): ["::1"],
}
SERVFAIL = {"servfail.test"}


def test_mx_lookup_decides_where_mail_goes(redis_client, redis_url, start_dataplane, start_sink):
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(25, [(IP, 1)], server_id=SERVER)],
                                        [make_bridge(1, 25, SECRET)]))
    stub = DnsStub(ZONE, SERVFAIL)
    try:
        sink = start_sink()
        plane = start_dataplane(redis_url, SERVER, delivery=True, args=[
            "--dns-server", f"127.0.0.1:{stub.port}", "--mx-port", str(sink.port), "--retry-schedule", "1h"])
        domains = ["mx.test", "pref.test", "implicit.test", "nullmx.test", "nx.test", "servfail.test",
                   "v6only.test"]
        plan = [(d, [f"user@{d}"], message(i)) for i, d in enumerate(domains)]
        ids = send_all(plane.port, "br-test1", SECRET, plan, sessions=1)

        def first_event(domain: str) -> dict | None:
            events = events_of(redis_client, ids[domain])
            return events[0] if events else None

        assert wait_until(lambda: all(first_event(d) for d in domains), timeout=30), plane.log()
        outcome = {d: (first_event(d)["outcome"], first_event(d)["reply"]) for d in domains}
        for domain in ("mx.test", "pref.test", "implicit.test"):
            assert outcome[domain][0] == "delivered", outcome
        assert outcome["nullmx.test"][0] == "bounced"
        assert outcome["nullmx.test"][1].startswith("556 5.1.10 domain nullmx.test does not accept mail")
        assert outcome["nx.test"] == ("bounced", "550 5.1.2 domain nx.test does not exist (DNS NXDOMAIN)")
        assert outcome["servfail.test"][0] == "deferred"
        assert outcome["servfail.test"][1].startswith("451 4.4.3 DNS lookup for servfail.test failed")
        assert outcome["v6only.test"] == (
            "deferred", "451 4.4.3 no IPv4 address for any mail server of v6only.test (six.v6only.test)")
        assert sorted(e["rcpts"][0] for e in sink.log()) == ["user@implicit.test", "user@mx.test", "user@pref.test"]
        assert {e["peer"] for e in sink.log()} == {IP}
        assert ("dead.pref.test", "A") in stub.queries  # the preferred host was tried first
        assert "no connection to dead.pref.test[127.0.0.99]" not in plane.log()  # the next one worked
        # A lookup is cached for its TTL: one MX query per domain.
        assert stub.queries.count(("mx.test", "MX")) == 1
    finally:
        stub.close()
