"""A tiny DNS server on loopback for the tests that resolve: the delivery tests'
MX, A and AAAA answers, and the DKIM tests' TXT records (which dkimpy reads through
`txt_lookup`, as a receiver reads them from the domain's DNS)."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset

# RFC 1035 section 3.3.14: a TXT record is a list of strings of at most 255 octets;
# a longer record (an RSA-2048 DKIM key is about 400) is published as several.
_TXT_STRING = 255


class DnsStub:
    """Answers queries from `zone` ({(name, type): [rdata text]}) over UDP on 127.0.0.1:
    NXDOMAIN for unknown names, SERVFAIL for the names in `servfail`. `zone` may
    change while it runs (`publish_txt`)."""

    def __init__(self, zone: dict[tuple[str, str], list[str]], servfail=()) -> None:
        self.zone = zone
        self.servfail = set(servfail)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def publish_txt(self, name: str, text: str) -> None:
        """Publish a TXT record, split into strings of at most 255 octets."""
        chunks = [text[i:i + _TXT_STRING] for i in range(0, len(text), _TXT_STRING)]
        self.zone[(name.lower(), "TXT")] = [" ".join(f'"{chunk}"' for chunk in chunks)]

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif not any(known == name for known, _ in list(self.zone)):
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif (name, rdtype) in self.zone:
                response.answer.append(dns.rrset.from_text(question.name, 300, "IN", rdtype, *self.zone[(name, rdtype)]))
            self.sock.sendto(response.to_wire(), peer)

    def txt_lookup(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """A TXT record from this server, its strings joined (dkimpy's `dnsfunc`); None if none."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.use_edns(0, 0, 4096)  # the stub answers over UDP only: no truncation
        text = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(text.rstrip("."), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(b"".join(rdata.strings) for rdata in answer)

    def close(self) -> None:
        self.sock.close()
