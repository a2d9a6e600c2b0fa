"""`poolmta dkim ...` and `poolmta pool signing` end to end: the real CLI (in process)
against a real control plane on the real Redis."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from control._pb.poolmta.v1 import poolmta_pb2 as pb
from control.cli.dkim_commands import TXT_MARKER, algorithm, state
from tests.cli.cli_support import field, table_rows, token_after


def test_algorithms_and_states_read_as_people_say_them():
    assert [algorithm(a) for a in (pb.RSA_SHA256, pb.ED25519_SHA256)] == ["rsa-sha256", "ed25519-sha256"]
    assert [state(s) for s in (pb.DKIM_ACTIVE, pb.DKIM_PUBLISHED, pb.DKIM_RETIRED)] == ["ACTIVE", "PUBLISHED", "RETIRED"]
    assert algorithm(0) == state(0) == algorithm(99) == "-"


def test_generate_prints_the_record_ready_to_paste(cli, acme):
    out = cli.ok("--token", acme, "dkim", "generate", "Example.com").out
    selector = field(out, "Selector")
    assert field(out, "Algorithm") == "rsa-sha256" and field(out, "State") == "ACTIVE"
    assert field(out, "DNS name") == f"{selector}._domainkey.example.com"
    record = token_after(out, TXT_MARKER)
    assert record.startswith("v=DKIM1; k=rsa; p=") and len(record) > 300  # one line, never wrapped
    assert serialization.load_der_public_key(base64.b64decode(record.split("p=")[1])).key_size == 2048
    assert "PRIVATE" not in out

    data = cli.ok("--token", acme, "--json", "dkim", "generate", "example.org", "--algorithm", "ed25519",
                  "--selector", "ed1").json()
    assert (data["selector"], data["algorithm"], data["state"]) == ("ed1", "ED25519_SHA256", "DKIM_ACTIVE")
    assert data["dns_record_name"] == "ed1._domainkey.example.org"
    assert data["dns_txt_record"].startswith("v=DKIM1; k=ed25519; p=")


def test_import_list_show_rotate_retire_delete(cli, acme, tmp_path):
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(pem)
    out = cli.ok("--token", acme, "dkim", "import", "example.com", "--selector", "legacy", "--pem", str(key_file)).out
    first = field(out, "ID")
    assert field(out, "Selector") == "legacy" and pem.decode().splitlines()[1] not in out

    rotated = cli.ok("--token", acme, "dkim", "rotate", "example.com")
    assert "PUBLISHED" in rotated.err and field(rotated.out, "Algorithm") == "ed25519-sha256"
    second = field(rotated.out, "ID")
    rows = table_rows(cli.ok("--token", acme, "dkim", "list", "example.com").out)
    assert [(r[0], r[1], r[4]) for r in rows] == [(first, "example.com", "PUBLISHED"), (second, "example.com", "ACTIVE")]
    listed = cli.ok("--token", acme, "--json", "dkim", "list").json()
    assert [k["state"] for k in listed["keys"]] == ["DKIM_PUBLISHED", "DKIM_ACTIVE"]

    shown = cli.ok("--token", acme, "dkim", "show", second).out
    assert token_after(shown, TXT_MARKER).startswith("v=DKIM1; k=ed25519; p=")

    refused = cli.fails(1, "--token", acme, "dkim", "retire", second)
    assert "FAILED_PRECONDITION" in refused.err and "--force" in refused.err
    refused = cli.fails(1, "--token", acme, "dkim", "delete", first)
    assert "only a RETIRED key" in refused.err
    assert "is RETIRED" in cli.ok("--token", acme, "dkim", "retire", first).out
    assert f"Deleted DKIM key {first}." in cli.ok("--token", acme, "dkim", "delete", first).out
    assert cli.ok("--token", acme, "--json", "dkim", "retire", second, "--force").json()["state"] == "DKIM_RETIRED"
    assert "NOT_FOUND" in cli.fails(1, "--token", acme, "dkim", "show", first).err


def test_import_refuses_a_missing_file_and_an_encrypted_key(cli, acme, tmp_path):
    missing = cli.fails(2, "--token", acme, "dkim", "import", "example.com", "--selector", "s", "--pem",
                        str(tmp_path / "nope.pem"))
    assert "cannot read" in missing.err
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-pass")))
    refused = cli.fails(1, "--token", acme, "dkim", "import", "example.com", "--selector", "s", "--pem", str(encrypted))
    assert "INVALID_ARGUMENT" in refused.err and "encrypted" in refused.err


def test_pool_signing_shows_sets_and_clears(cli, acme):
    cli.ok("--token", acme, "pool", "create", "promo", "--server", "1")
    refused = cli.fails(1, "--token", acme, "pool", "signing", "promo", "--domain", "example.com")
    assert "FAILED_PRECONDITION" in refused.err and "poolmta dkim generate example.com" in refused.err
    cli.ok("--token", acme, "dkim", "generate", "example.com", "--algorithm", "ed25519")
    cli.ok("--token", acme, "dkim", "generate", "esp.example.net", "--algorithm", "ed25519")
    out = cli.ok("--token", acme, "pool", "signing", "promo", "--domain", "example.com").out
    assert "as example.com; feedback signature: -." in out
    data = cli.ok("--token", acme, "--json", "pool", "signing", "promo", "--feedback-domain", "esp.example.net").json()
    assert (data["signing_domain"], data["feedback_signing_domain"]) == ("example.com", "esp.example.net")
    assert field(cli.ok("--token", acme, "pool", "show", "promo").out, "Signing domain") == "example.com"
    assert "as example.com; feedback signature: esp.example.net." in cli.ok("--token", acme, "pool", "signing", "promo").out
    assert "as -; feedback signature: -." in cli.ok("--token", acme, "pool", "signing", "promo", "--clear").out
    assert cli.fails(2, "--token", acme, "pool", "signing", "promo", "--clear", "--domain", "x.example").code == 2
