"""Peer suite: all 139 Microsoft FHIR-Converter sample messages through the real MLLP
listener, sent by python-hl7's `mllp_send` over one persistent connection, into the real
`hl7v2` adapter, journal (SQLite) and processing.

Every message is answered (AA, or AR with a specific reason), none is lost, nothing
crashes; and the Bundles the hub built from what arrived over MLLP agree with Microsoft's
expected output exactly as the direct comparison in docs/hl7v2.md says.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hl7.client import read_loose
from sqlalchemy import text

from hub.domain.model import MessageState
from hub.hl7v2 import decode
from tests.integration.fhir_converter_compare import OPTIONS, compare, require_corpus
from tests.integration.running import wait_until

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus" / "microsoft-fhir-converter" / "hl7v2"
MLLP_SEND = Path(sys.executable).parent / "mllp_send"
ACCEPTED = {"ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A11", "ADT^A13",
            "ADT^A28", "ADT^A31", "ADT^A40", "ORU^R01"}
OPTION_LINES = "\n".join(f'{k} = "{v}"' for k, v in OPTIONS.items())
CONFIG = f"""
[hub]
mappings_dir = "{REPO / 'mappings'}"

[sources.hospital]
type = "mllp"
adapter = "hl7v2"
host = "127.0.0.1"
port = 0
processing_ids = ["P", "T"]

[sources.hospital.options]
{OPTION_LINES}

[destinations.ehr]
type = "folder"
path = "out"

[[routes]]
name = "hospital-messages"
match = {{ categories = ["patient_administration", "laboratory"] }}
destinations = ["ehr"]
"""
ACK_FRAME = re.compile(rb"\x0b(.*?)\x1c\r", re.S)


def corpus_stream() -> tuple[bytes, list[tuple[str, bytes]]]:
    """One file holding all 139 messages (as `mllp_send --loose` reads them), and what
    mllp_send will send for each: (file stem, exact bytes).

    The files' UTF-8 byte-order marks are dropped: mllp_send splits on the MSH start, so a
    BOM would end up inside the previous message; the BOM path is tested on its own in
    test_mllp_source.py.
    """
    require_corpus()
    files = sorted(CORPUS.glob("*.hl7"))
    assert len(files) == 139
    parts = []
    for f in files:
        data = f.read_bytes()
        parts.append(data.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n") + b"\n")
    stream = b"".join(parts)
    sent = list(read_loose(io.BytesIO(stream)))
    assert len(sent) == 139, "every file must hold exactly one message"
    return stream, [(f.stem, body) for f, body in zip(files, sent, strict=True)]


def segment(ack: bytes, name: str) -> list[str]:
    for seg in ack.decode("utf-8").split("\r"):
        if seg.startswith(name + "|"):
            return seg.split("|")
    return []


def error_of(ack: bytes) -> tuple[str, str]:
    """(HL7 table 0357 code, reason text) of a negative ACK, in either ERR layout: v2.5+
    ERR-3 code and ERR-8 text; before v2.5 ERR-1 `seg^seq^field^code&text&table` and the
    reason in MSA-3."""
    err = segment(ack, "ERR")
    if len(err) > 8:
        return err[3].split("^")[0], err[8]
    return err[1].split("^")[3].split("&")[0], segment(ack, "MSA")[3]


@pytest.fixture
async def hospital(tryggbro_hub):
    hub = tryggbro_hub(CONFIG)
    hub.intake.start()
    source = hub.sources["hospital"]
    await source.start()
    yield hub, source.port
    await source.stop()
    hub.intake.stop()


async def test_all_139_corpus_messages_over_mllp(hospital, tmp_path):
    hub, port = hospital
    stream, sent = corpus_stream()
    path = tmp_path / "corpus.hl7"
    path.write_bytes(stream)
    proc = await asyncio.create_subprocess_exec(
        str(MLLP_SEND), "--loose", "-p", str(port), "-f", str(path), "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode(errors="replace")
    acks = ACK_FRAME.findall(out)

    # Every message answered, in order, on the one connection.
    assert len(acks) == 139
    accepted: dict[str, bytes] = {}
    refused: dict[str, str] = {}
    for (stem, body), ack in zip(sent, acks, strict=True):
        header = decode(body).header
        msa = segment(ack, "MSA")
        assert msa[2] == header.control_id, stem
        enhanced = header.enhanced_mode  # MSH-15/16 valued: CA/CR instead of AA/AR
        if header.message_type in ACCEPTED:
            assert msa[1] == ("CA" if enhanced else "AA"), (stem, ack)
            accepted[stem] = body
        else:
            # A specific reason: the HL7 error code and what this listener accepts.
            assert msa[1] == ("CR" if enhanced else "AR"), (stem, ack)
            code, reason = error_of(ack)
            assert code in ("200", "201"), (stem, ack)
            assert header.message_code in reason
            assert "accepted:" in reason
            refused[stem] = reason
    assert len(accepted) == 31
    assert len(refused) == 108

    # None lost: one journal row per accepted message, holding exactly what was sent
    # (the corpus reuses control ids across files: those are journaled as new messages).
    with hub.db.read_engine.connect() as conn:
        journal = {bytes(r.body): (int(r.id), r.dedup_key) for r in conn.execute(text(
            "select id, body, dedup_key from journal where source = 'hospital'"))}
    assert len(journal) == 31
    ids = {stem: journal[body][0] for stem, body in accepted.items()}
    reused = [key for _, key in journal.values() if "#" in key]
    assert len(reused) == 31 - len({decode(b).header.dedup_key for b in accepted.values()})

    # Processing: every message processed, or held as failed with its reason.
    def drained() -> bool:
        while hub.processor().run_batch()[0]:
            pass
        return True

    await wait_until(drained, what="processing")
    produced: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for stem, mid in ids.items():
        trace = hub.repo.message_trace(mid)
        assert trace is not None
        if trace["state"] == MessageState.FAILED:
            assert trace["reason"], stem
            failed[stem] = trace["reason"]
            continue
        assert trace["state"] == MessageState.PROCESSED, (stem, trace["state"], trace["reason"])
        produced[stem] = [entry["resource"] for _, payload in hub.repo.event_payloads(mid)
                          for entry in json.loads(payload or "null")["entry"]]
    # The one accepted message we cannot map: observations before any OBR.
    assert list(failed) == ["ORU-R01-01"]
    assert "OBR" in failed["ORU-R01-01"]

    # What arrived over MLLP maps exactly as the direct comparison (docs/hl7v2.md) says.
    over_mllp = compare(produced, failed)
    direct = compare()
    assert [(f.key, f.ours) for f in over_mllp.fields] == \
        [(f.key, f.ours) for f in direct.fields]
    assert over_mllp.agreement >= 0.95

    # The listener is still serving after the run.
    again = await asyncio.create_subprocess_exec(
        str(MLLP_SEND), "--loose", "-p", str(port), "-f",
        str(CORPUS / "ADT-A01-01.hl7"), "127.0.0.1", stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(again.communicate(), timeout=30)
    assert segment(ACK_FRAME.findall(out)[0], "MSA")[1] == "AA"
