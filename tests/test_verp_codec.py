"""VERP return paths (`dataplane.verp`): the format, round trips, and every way an
address is refused. Keyrings are real files (see test_verp_keyring_file.py for the
file itself)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dataplane.verp import (
    DEFAULT_MAX_AGE,
    MAX_DOMAIN_LENGTH,
    MAX_RCPT_INDEX,
    VerpCodec,
    VerpError,
    VerpReason,
    bounce_domain,
    check_bounce_domain,
)
from dataplane.verp_keyring import VerpKeyring

DATA = Path(__file__).parent / "data" / "verp"
DAY = 86400.0
ATEXT = set(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
DOMAIN = "mta1.example.net"
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def message_id(ms: int = NOW_MS, nonce: str = "a1b2c3d4", counter: int = 1) -> str:
    return f"{ms:012x}{nonce}{counter:06x}"


def spec_address(message_id: str, rcpt_index: int, domain: str, key_id: int, secret: bytes) -> str:
    """The module docstring's format, written out independently of the module."""
    payload = bytes.fromhex(message_id) + rcpt_index.to_bytes(2, "big") + bytes([key_id])
    mac = hmac.new(secret, b"poolmta-verp-1\x00" + payload + b"\x00" + domain.encode(), hashlib.sha256).digest()[:9]
    return "b-" + base64.b32encode(payload + mac).decode().lower() + "@" + domain


def write_keyring(path: Path, current: int, secret: bytes = bytes(32), others: tuple[int, ...] = ()) -> VerpKeyring:
    keys = [{"id": k, "secret": base64.b64encode(bytes([k]) * 32).decode(), "created": 1.0, "superseded": 2.0}
            for k in others if k != current]
    keys.append({"id": current, "secret": base64.b64encode(secret).decode(), "created": 2.0, "superseded": None})
    path.write_text(json.dumps({"format": "poolmta-verp-keyring", "version": 1, "current": current, "keys": keys}))
    path.chmod(0o600)
    return VerpKeyring.load_or_create(path)


def codec_at(keyring: VerpKeyring, ms: int = NOW_MS, **kwargs) -> VerpCodec:
    return VerpCodec(keyring, clock=lambda: ms / 1000.0, **kwargs)


@pytest.fixture
def keyring(tmp_path: Path) -> VerpKeyring:
    return VerpKeyring.load_or_create(tmp_path / "verp.keys")


@pytest.fixture
def codec(keyring: VerpKeyring) -> VerpCodec:
    return codec_at(keyring)


# --- format ----------------------------------------------------------------------


def test_known_addresses_decode_and_encode_exactly(tmp_path: Path):
    """The vectors pin format 1: a later release must decode what this one sent."""
    shutil.copy(DATA / "keyring-v1.json", tmp_path / "verp.keys")
    (tmp_path / "verp.keys").chmod(0o600)
    keyring = VerpKeyring.load_or_create(tmp_path / "verp.keys")
    rows = [line.split() for line in (DATA / "vectors.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(rows) == 4
    for mid, index, domain, address in rows:
        codec = codec_at(keyring, int(mid[:12], 16))
        assert codec.encode(mid, int(index), domain) == address
        assert address == spec_address(mid, int(index), domain, 7, bytes(range(32)))
        token = codec.decode(address)
        assert (token.message_id, token.rcpt_index, token.key_id) == (mid, int(index), 7)


def test_address_shape(codec: VerpCodec):
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 19])
    assert len(longest) == MAX_DOMAIN_LENGTH
    for domain in (DOMAIN, longest):
        address = codec.encode(message_id(), MAX_RCPT_INDEX, domain)
        local, _, got_domain = address.partition("@")
        assert got_domain == domain
        assert local.startswith("b-") and len(local) == 42 <= 64  # RFC 5321 4.5.3.1.1
        assert set(local) <= ATEXT and local == local.lower()
        assert len(address) <= 254  # RFC 5321 4.5.3.1.3, without the angle brackets


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ms=st.integers(0, 2**48 - 1),
    nonce=st.text("0123456789abcdef", min_size=8, max_size=8),
    counter=st.integers(0, 0xFFFFFF),
    rcpt_index=st.integers(0, MAX_RCPT_INDEX),
    key_id=st.integers(0, 255),
    secret=st.binary(min_size=32, max_size=32),
    domain=st.sampled_from([DOMAIN, "bounces.acme.example", "x", "xn--bcher-kva.example"]),
)
@example(ms=0, nonce="00000000", counter=0, rcpt_index=0, key_id=0, secret=bytes(32), domain="x")
def test_round_trip(tmp_path: Path, ms, nonce, counter, rcpt_index, key_id, secret, domain):
    keyring = write_keyring(tmp_path / "verp.keys", key_id, secret)
    codec = codec_at(keyring, ms)
    mid = message_id(ms, nonce, counter)
    address = codec.encode(mid, rcpt_index, domain)
    assert address == spec_address(mid, rcpt_index, domain, key_id, secret)
    token = codec.decode(address)
    assert (token.message_id, token.rcpt_index, token.key_id, token.accepted_ms) == (mid, rcpt_index, key_id, ms)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.booleans(), min_size=61, max_size=61))
def test_case_never_matters(codec: VerpCodec, flips: list[bool]):
    address = codec.encode(message_id(), 12, "Bounces.Acme.Example")
    assert address.endswith("@bounces.acme.example")
    mixed = "".join(c.upper() if flip else c for c, flip in zip(address, flips, strict=False)) + address[len(flips):]
    assert codec.decode(mixed) == codec.decode(address)
    assert codec.decode(address.upper()).rcpt_index == 12
    assert codec.decode(address + ".").rcpt_index == 12  # a fully qualified domain


# --- refusals ---------------------------------------------------------------------


def refusal(codec: VerpCodec, address, **kwargs) -> VerpReason:
    with pytest.raises(VerpError) as caught:
        codec.decode(address, **kwargs)
    return caught.value.reason


def test_every_flipped_bit_is_refused(codec: VerpCodec):
    address = codec.encode(message_id(), 3, DOMAIN)
    raw = base64.b32decode(address[2:42].upper())
    for bit in range(len(raw) * 8):
        damaged = bytearray(raw)
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        forged = "b-" + base64.b32encode(bytes(damaged)).decode().lower() + "@" + DOMAIN
        reason = refusal(codec, forged)
        # Bits of the key id name a key this keyring does not hold; every other bit breaks the MAC.
        assert reason is (VerpReason.UNKNOWN_KEY if bit // 8 == 15 else VerpReason.BAD_MAC), bit


def test_forged_mac_and_foreign_key_are_refused(tmp_path: Path, codec: VerpCodec):
    address = codec.encode(message_id(), 0, DOMAIN)
    local, _, domain = address.partition("@")
    for mac_chars in ("a" * 14, "2" * 14, local[-14:][::-1]):
        assert refusal(codec, f"{local[:-14]}{mac_chars}@{domain}") is VerpReason.BAD_MAC
    # Same key id, another secret: another installation's address.
    other = codec_at(write_keyring(tmp_path / "other.keys", codec.keyring.current.id, b"\x01" * 32))
    assert refusal(codec, other.encode(message_id(), 0, DOMAIN)) is VerpReason.BAD_MAC


def test_wrong_domain_is_refused(codec: VerpCodec):
    address = codec.encode(message_id(), 5, DOMAIN)
    moved = address.replace(DOMAIN, "bounces.other.example")
    assert refusal(codec, moved) is VerpReason.BAD_MAC  # the MAC covers the domain
    assert refusal(codec, moved, domains={DOMAIN}) is VerpReason.NOT_OURS
    assert codec.decode(address, domains={DOMAIN}).rcpt_index == 5


def test_expiry_and_clock_skew(keyring: VerpKeyring):
    sent = codec_at(keyring).encode(message_id(), 1, DOMAIN)
    assert codec_at(keyring, NOW_MS + int(DEFAULT_MAX_AGE * 1000)).decode(sent).rcpt_index == 1
    assert refusal(codec_at(keyring, NOW_MS + int(DEFAULT_MAX_AGE * 1000) + 1000), sent) is VerpReason.EXPIRED
    assert refusal(codec_at(keyring, NOW_MS + int(3 * DAY * 1000), max_age=2 * DAY), sent) is VerpReason.EXPIRED
    assert codec_at(keyring, NOW_MS - 299_000).decode(sent).rcpt_index == 1  # within the 5-minute skew
    assert refusal(codec_at(keyring, NOW_MS - 301_000), sent) is VerpReason.NOT_YET_VALID
    assert refusal(codec_at(keyring, NOW_MS - 1000, clock_skew=0), sent) is VerpReason.NOT_YET_VALID


def test_forged_and_expired_reports_the_forgery(keyring: VerpKeyring):
    sent = codec_at(keyring).encode(message_id(), 1, DOMAIN)
    forged = sent[:30] + ("a" if sent[30] != "a" else "b") + sent[31:]
    late = codec_at(keyring, NOW_MS + int(100 * DAY * 1000))
    assert refusal(late, forged) is VerpReason.BAD_MAC  # the MAC is checked first


def test_rotation_keeps_mail_in_flight_and_retiring_refuses_it(tmp_path: Path):
    path = tmp_path / "verp.keys"
    keyring = VerpKeyring.load_or_create(path)
    codec = codec_at(keyring)
    before = codec.encode(message_id(), 4, DOMAIN)
    old_key = keyring.current.id
    new_key = keyring.rotate().id
    after = codec.encode(message_id(counter=2), 9, DOMAIN)
    assert (codec.decode(before).key_id, codec.decode(after).key_id) == (old_key, new_key)
    keyring.retire(old_key)
    assert refusal(codec, before) is VerpReason.UNKNOWN_KEY
    assert codec.decode(after).rcpt_index == 9


def test_a_key_rotated_in_another_process_is_found_on_first_use(tmp_path: Path):
    path = tmp_path / "verp.keys"
    listener = codec_at(VerpKeyring.load_or_create(path))  # e.g. the inbound listener
    worker_keyring = VerpKeyring.load_or_create(path)  # e.g. a worker that rotates
    worker_keyring.rotate()
    sent = codec_at(worker_keyring).encode(message_id(), 2, DOMAIN)
    assert listener.decode(sent).key_id == worker_keyring.current.id
    assert listener.keyring.current.id == worker_keyring.current.id


def test_rotation_and_retirement_elsewhere_take_effect_within_the_reload_interval(tmp_path: Path):
    path = tmp_path / "verp.keys"
    worker = codec_at(VerpKeyring.load_or_create(path), reload_interval=0)
    patient = codec_at(VerpKeyring.load_or_create(path))  # the default: looks every 60 s
    sent = worker.encode(message_id(), 1, DOMAIN)
    operator = VerpKeyring.load_or_create(path)  # e.g. the CLI
    new_key = operator.rotate()
    assert worker.decode(worker.encode(message_id(), 2, DOMAIN)).key_id == new_key.id  # signs with the new key
    operator.retire(1)
    assert refusal(worker, sent) is VerpReason.UNKNOWN_KEY
    assert patient.decode(sent).key_id == 1  # until its next look at the file
    with pytest.raises(VerpError, match="reload interval"):
        VerpCodec(operator, reload_interval=-1)


def test_a_damaged_keyring_file_does_not_stop_a_running_codec(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "verp.keys"
    codec = codec_at(VerpKeyring.load_or_create(path), reload_interval=0)
    sent = codec.encode(message_id(), 3, DOMAIN)
    path.write_text("{")
    assert codec.decode(sent).rcpt_index == 3 and codec.encode(message_id(), 4, DOMAIN)
    assert "VERP keyring not reloaded" in caplog.text


def test_not_ours_and_malformed(codec: VerpCodec):
    good = codec.encode(message_id(), 0, DOMAIN)
    token = good[2:42]
    for address in ("postmaster@" + DOMAIN, "bounce-x@" + DOMAIN, "", "@", "b-", "nobody", "c-" + good[2:]):
        assert refusal(codec, address) is VerpReason.NOT_OURS, address
    for address in (
        "b-@" + DOMAIN, good[:-len(DOMAIN) - 2] + "@" + DOMAIN, "b-" + token + "a@" + DOMAIN,
        "b-" + token[:-1] + "1@" + DOMAIN, "b-" + token[:-1] + "=@" + DOMAIN,
        "b-" + token.replace(token[0], "é") + "@x",
        good.replace(DOMAIN, "mtä.example"), "b-" + token + "@" + DOMAIN + "\r\nRCPT TO:<x>",
    ):
        assert refusal(codec, address) is VerpReason.MALFORMED, address
    assert refusal(codec, "b-" + "x" * 5000 + "@" + DOMAIN) is VerpReason.MALFORMED
    # Found by hypothesis: escapes made the quoted address in the message long.
    with pytest.raises(VerpError) as caught:
        codec.decode("0" * 8 + "\x1f" * 14 + "\x08" + "\U00010000" * 50)
    assert len(str(caught.value)) < 200 and str(caught.value).isascii()
    for junk in (None, b"b-x@y", 42, ["b-"]):
        assert refusal(codec, junk) is VerpReason.MALFORMED


def mutations(valid: str) -> st.SearchStrategy[str]:
    position = st.integers(0, len(valid))
    return st.one_of(
        st.text(max_size=300),
        st.builds(lambda i, s: valid[:i] + s + valid[i:], position, st.text(max_size=8)),
        st.builds(lambda i, j: valid[:i] + valid[j:], position, position),
        st.builds(lambda i, c: valid[:i] + c + valid[i + 1:], position, st.characters()),
        st.builds(lambda s: "b-" + s, st.text(max_size=80)),
        st.builds(lambda s, d: "b-" + s + "@" + d, st.text("abcdefghijklmnopqrstuvwxyz234567=", max_size=45),
                  st.text(max_size=20)),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_anything_else_raises_only_verp_error(codec: VerpCodec, data):
    valid = codec.encode(message_id(), 77, DOMAIN)
    address = data.draw(mutations(valid))
    try:
        token = codec.decode(address)
    except VerpError as exc:
        assert isinstance(exc.reason, VerpReason) and len(str(exc)) < 200
    else:  # only a case change or a trailing dot of the domain can leave it valid
        assert (token.message_id, token.rcpt_index) == (message_id(), 77)
        assert address.lower().rstrip(".") == valid


# --- encode arguments and bounce domains ------------------------------------------


def test_encode_refuses_what_it_cannot_sign(codec: VerpCodec):
    for mid in ("", "0" * 25, "0" * 27, "g" * 26, message_id().upper(), None, 12):
        with pytest.raises(VerpError) as caught:
            codec.encode(mid, 0, DOMAIN)
        assert caught.value.reason is VerpReason.INVALID
    for index in (-1, MAX_RCPT_INDEX + 1, 1.0, True, "1"):
        with pytest.raises(VerpError, match="recipient index"):
            codec.encode(message_id(), index, DOMAIN)
    with pytest.raises(VerpError, match="not a valid domain"):
        codec.encode(message_id(), 0, "bad_domain.example")
    with pytest.raises(VerpError, match="max age"):
        VerpCodec(codec.keyring, max_age=0)
    with pytest.raises(VerpError, match="clock skew"):
        VerpCodec(codec.keyring, clock_skew=-1)


def test_bounce_domain_is_the_pool_override_else_the_server_hostname():
    assert bounce_domain("MTA1.Example.NET") == "mta1.example.net"
    assert bounce_domain("mta1.example.net.", None) == "mta1.example.net"
    assert bounce_domain("mta1.example.net", "") == "mta1.example.net"
    assert bounce_domain("mta1.example.net", "Bounces.Acme.Example") == "bounces.acme.example"
    assert check_bounce_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert check_bounce_domain("a" * 63 + ".example") == "a" * 63 + ".example"
    for bad in ("", ".", "a..b", "-a.example", "a-.example", "a_b.example", "a b.example", "bücher.example",
                "a" * 64 + ".example", "a." * 107, "[192.0.2.1]", "a.example\n", None):
        with pytest.raises(VerpError) as caught:
            check_bounce_domain(bad)
        assert caught.value.reason is VerpReason.INVALID, bad
    with pytest.raises(VerpError, match="A-label"):
        bounce_domain("mta1.example.net", "bücher.example")
