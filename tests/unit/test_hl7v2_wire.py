"""HL7 v2 at the wire: charset by MSH-18, the MSH, dedup keys and ACKs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import hl7
import pytest

from hub.hl7v2 import ACCEPT, ERROR, REJECT, Hl7Error, ack_code, ack_wanted, build_ack, decode

CORPUS = Path(__file__).resolve().parents[2].parent / "shared/corpus/microsoft-fhir-converter/hl7v2"
AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def adt(charset: str = "", *, msh15: str = "", msh16: str = "", control: str = "MSG1") -> str:
    return (f"MSH|^~\\&|SYKEHUS|OUS|TRYGGBRO|OSLO|20261122120000||ADT^A01^ADT_A01|{control}|P"
            f"|2.5|||{msh15}|{msh16}||{charset}\r"
            "PID|1||12345^^^OUS^PI||Ærlig^Øystein Åse||19450101|M")


def test_every_corpus_message_decodes_and_names_its_type():
    files = sorted(CORPUS.glob("*.hl7"))
    assert len(files) == 139
    for f in files:
        decoded = decode(f.read_bytes())
        assert decoded.header.message_code, f.name
        assert "\n" not in decoded.text  # LF files are normalised to CR
        assert decoded.text.startswith("MSH")


@pytest.mark.parametrize(("charset", "codec"), [("8859/1", "iso-8859-1"),
                                                ("8859/15", "iso-8859-15"),
                                                ("UNICODE UTF-8", "utf-8")])
def test_norwegian_letters_decode_by_msh18(charset, codec):
    decoded = decode(adt(charset).encode(codec))
    assert decoded.codec == codec
    assert "Ærlig^Øystein Åse" in decoded.text


def test_an_empty_msh18_uses_the_source_default_and_never_guesses():
    latin = adt().encode("iso-8859-1")
    assert "Øystein" in decode(latin, default_charset="iso-8859-1").text
    with pytest.raises(Hl7Error) as exc:
        decode(latin)  # default UTF-8: the Æ byte is not UTF-8
    assert exc.value.code == "103"
    assert exc.value.location == "MSH-18"
    assert "byte" in exc.value.text
    assert "MSH-18 is empty" in exc.value.text


def test_a_byte_order_mark_means_utf8_and_may_not_contradict_msh18():
    assert "Åse" in decode(b"\xef\xbb\xbf" + adt().encode()).text
    with pytest.raises(Hl7Error, match="contradicts"):
        decode(b"\xef\xbb\xbf" + adt("8859/1").encode("iso-8859-1"))


@pytest.mark.parametrize(("message", "code", "location"), [
    ("PID|1||x", "100", "MSH"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|9.9", "203", "MSH-12"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01||P|2.5", "101", "MSH-10"),
    ("MSH|^~\\&|A|B|C|D|20260101|||X1|P|2.5", "101", "MSH-9"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT|X1|P|2.5", "101", "MSH-9"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|", "101", "MSH-12"),
    ("MSH|^^^^|A|B|C|D|20260101||ADT^A01|X1|P|2.5", "102", "MSH-2"),
    ("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5||||||KLINGON", "103", "MSH-18"),
])
def test_a_broken_msh_is_refused_naming_the_field(message, code, location):
    with pytest.raises(Hl7Error) as exc:
        decode(message.encode())
    assert (exc.value.code, exc.value.location) == (code, location)


def test_dedup_key_is_msh3_msh4_msh10_and_bounded():
    header = decode(adt().encode()).header
    assert header.dedup_key == "SYKEHUS|OUS|MSG1"
    long = decode(adt(control="X" * 300).encode()).header
    assert long.dedup_key.startswith("sha256:")
    assert len(long.dedup_key) <= 255


def test_original_and_enhanced_mode_codes_and_msh15_conditions():
    original = decode(adt().encode()).header
    assert [ack_code(original, o) for o in (ACCEPT, ERROR, REJECT)] == ["AA", "AE", "AR"]
    assert all(ack_wanted(original, o) for o in (ACCEPT, ERROR, REJECT))
    enhanced = decode(adt(msh15="AL", msh16="NE").encode()).header
    assert [ack_code(enhanced, o) for o in (ACCEPT, ERROR, REJECT)] == ["CA", "CE", "CR"]
    on_error = decode(adt(msh15="ER", msh16="AL").encode()).header
    assert (ack_wanted(on_error, ACCEPT), ack_wanted(on_error, REJECT)) == (False, True)
    on_success = decode(adt(msh15="SU").encode()).header
    assert (ack_wanted(on_success, ACCEPT), ack_wanted(on_success, ERROR)) == (True, False)
    never = decode(adt(msh15="NE", msh16="AL").encode()).header
    assert not ack_wanted(never, ACCEPT)
    assert not ack_wanted(never, REJECT)
    app_only = decode(adt(msh16="AL").encode()).header  # MSH-15 empty in enhanced mode: AL
    assert app_only.enhanced_mode
    assert ack_wanted(app_only, ACCEPT)


def test_the_ack_answers_the_sender_and_parses_as_hl7():
    header = decode(adt("8859/1").encode("iso-8859-1")).header
    text = build_ack(header, "AA", at=AT)
    ack = hl7.parse(text)
    msh, msa = ack.segment("MSH"), ack.segment("MSA")
    assert str(msh[3]) == "TRYGGBRO"
    assert str(msh[5]) == "SYKEHUS"
    assert str(msh[9]) == "ACK^A01^ACK"
    assert str(msh[12]) == "2.5"
    assert str(msh[18]) == "8859/1"
    assert str(msh[7]) == "20261122120000+0000"
    assert (str(msa[1]), str(msa[2])) == ("AA", "MSG1")
    assert build_ack(header, "AA", at=AT) == text  # deterministic: a resend gets the same


def test_a_rejection_carries_the_reason_escaped_in_msa3_and_err():
    header = decode(adt().encode()).header
    error = Hl7Error("MSH-9 A|B^C is not accepted", code="200", location="MSH-9")
    ack = hl7.parse(build_ack(header, "AR", at=AT, text=error.text, error=error))
    assert str(ack.segment("MSA")[3]) == "MSH-9 A\\F\\B\\S\\C is not accepted"
    err = ack.segment("ERR")
    assert str(err[2]) == "MSH^1^9"
    assert str(err[3]) == "200^Unsupported message type^HL70357"
    assert str(err[4]) == "E"
    v23 = decode(adt().replace("|2.5|", "|2.3|").encode()).header
    old = hl7.parse(build_ack(v23, "AR", at=AT, text=error.text, error=error))
    assert str(old.segment("ERR")[1]) == "MSH^1^9^200&Unsupported message type&HL70357"
    assert str(old.segment("MSH")[9]) == "ACK^A01"


def test_v27_and_later_carry_the_text_in_err8_not_msa3():
    header = decode(adt().replace("|2.5|", "|2.8|").encode()).header
    error = Hl7Error("PID-3 is empty", code="101", location="PID-3", reject=False)
    ack = hl7.parse(build_ack(header, "AE", at=AT, text=error.text, error=error))
    assert len(ack.segment("MSA")) == 3  # MSA-3 withdrawn in v2.7
    assert str(ack.segment("ERR")[8]) == "PID-3 is empty"


def test_an_unreadable_msh_still_gets_a_minimal_ack():
    error = Hl7Error("the message does not start with an MSH segment", code="100",
                     location="MSH")
    ack = hl7.parse(build_ack(None, ack_code(None, REJECT), at=AT, text=error.text,
                              error=error))
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("MSH")[12]) == "2.5"


def test_without_msh7_blanks_only_the_creation_time():
    from hub.hl7v2.wire import without_msh7

    a = adt().encode()
    b = adt().replace("|20261122120000|", "|20261122130000|").encode()
    assert a != b
    assert without_msh7(a) == without_msh7(b)
    assert without_msh7(a) != without_msh7(adt(control="MSG2").encode())
    assert without_msh7(b"\xef\xbb\xbf" + a) == without_msh7(a)
    assert without_msh7(b"PID|1") == b"PID|1"
