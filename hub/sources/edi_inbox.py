"""EDI 2.0 inbox (`type = "edi2-inbox"`) and its adapter `msghead`: what GPs send back.

The source polls `GET /Messages/Unread?receiverHerIds=…` for each of our HER-ids, fetches
each message's business document, journals it through intake (dedup key: the EDI 2.0
message id) and only after that commit sends an AppRec for it (not for AppRecs: a
receipt is never receipted) and marks it read. A crash anywhere before "read" means the
message is fetched again next time; the journal answers the copy as a duplicate, and the
AppRec and "read" are repeated, which EDI 2.0 takes idempotently.

The AppRec says whether the document could be taken: 1 (OK) when it is a MsgHead or
AppRec we can read, 2 (Avvist) with the 8221 code (T01 not XML, T10 format not supported,
T99 other format error) when not. What happens to the content later (an answer to
nothing we sent, say) is visible to operators as a held message, not to the sender.

The `msghead` adapter turns a journaled document into events:
- an AppRec → a receipt event that settles the delivery found by OriginalMsgId
  (status 1 delivered, 2 dead letter with the 8221 codes, 3 delivered with the errors
  kept), in the same transaction as the message's own state;
- a Dialogmelding answer → a `gp_answer` event correlated by ConversationRef, mapped to
  a FHIR Communication (hub.builtin.gp_mapping) and routed like any event.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field

from hub import hookimpl
from hub.auth import AuthError
from hub.contracts import (
    AdapterSetup,
    IntakeRequest,
    RegisterAdapter,
    RegisterSource,
    SourceType,
)
from hub.destinations.edi import Edi2Client, Edi2ClientSettings, Edi2Error
from hub.domain.model import (
    Category,
    DeviceRef,
    Event,
    RawMessage,
    Receipt,
    ReceiptStatus,
    StoredMessage,
)
from hub.errors import InputError
from hub.httpclient import TransportFailure
from hub.logging import get_logger
from hub.messaging.model import APPREC_STATUS_TEXT, AppRec, AppRecStatus
from hub.messaging.xml import DEFAULT_MAX_BYTES, XmlRejected, read_message

log = get_logger("hub.sources.edi_inbox")

CONTENT_TYPE = "application/xml"
APPREC = "apprec"
GP_ANSWER = "gp_answer"
OSLO = ZoneInfo("Europe/Oslo")
RECEIPT_STATUS = {AppRecStatus.OK: ReceiptStatus.DELIVERED,
                  AppRecStatus.REJECTED: ReceiptStatus.REJECTED,
                  AppRecStatus.OK_ERRORS_IN_PART: ReceiptStatus.PARTIAL}
# EDI 2.0's simplified AppRec statuses.
EDI2_APPREC_OK = "Ok"
EDI2_APPREC_REJECTED = "Rejected"


class Edi2InboxSettings(Edi2ClientSettings):
    receiver_her_ids: list[str] = Field(min_length=1, description="our HER-ids whose "
                                        "unread messages are fetched")
    poll_seconds: float = Field(60.0, gt=0, description="how often the inbox is polled")
    max_body_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024, le=64 * 1024 * 1024)


class Edi2Inbox:
    def __init__(self, name: str, settings: Edi2InboxSettings, intake: Any) -> None:
        self.name = name
        self.settings = settings
        self.intake = intake
        self.client = Edi2Client(settings, f"sources.{name}")
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"source:{self.name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=15)
        await self.client.aclose()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.poll_once()
            except (TransportFailure, Edi2Error, AuthError) as exc:
                log.warning("EDI 2.0 inbox poll failed; trying again next interval",
                            source=self.name, reason=str(exc))
            except Exception:
                log.exception("EDI 2.0 inbox poll failed; trying again next interval",
                              source=self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.poll_seconds)

    async def poll_once(self) -> int:
        """Take every unread message of our HER-ids. Returns how many were journaled."""
        taken = 0
        for her_id in self.settings.receiver_her_ids:
            for item in await self.client.unread(her_id):
                message_id = str(item.get("id") or "")
                if not message_id:
                    continue
                try:
                    await self._take(message_id, str(item.get("receiverHerId") or her_id))
                except Edi2Error as exc:
                    # EDI 2.0 refused a call about this message: the others still go on;
                    # this one stays unread and is tried again next poll.
                    log.warning("EDI 2.0 message not taken; trying again next poll",
                                source=self.name, edi_message_id=message_id, reason=str(exc))
                    continue
                taken += 1
        return taken

    async def _take(self, message_id: str, her_id: str) -> None:
        document = await self.client.business_document(message_id)
        body, problem = _decode(document, self.settings.max_body_bytes)
        await self.intake.submit(RawMessage(
            source=self.name, dedup_key=message_id, content_type=CONTENT_TYPE, body=body,
            received_at=datetime.now(UTC),
            transport={"edi_message_id": message_id, "receiver_her_id": her_id}))
        # Committed: now the sender may be told, and the message marked read.
        status, errors = EDI2_APPREC_OK, []
        is_apprec = False
        if problem is not None:
            status, errors = EDI2_APPREC_REJECTED, [{"errorCode": problem.code,
                                                    "details": problem.reason}]
        else:
            try:
                is_apprec = isinstance(read_message(body, max_bytes=self.settings.max_body_bytes),
                                       AppRec)
            except XmlRejected as exc:
                status, errors = EDI2_APPREC_REJECTED, [{"errorCode": exc.code,
                                                        "details": exc.reason}]
        if not is_apprec:
            await self.client.post_apprec(message_id, her_id, status, errors)
        await self.client.mark_read(message_id, her_id)
        log.info("EDI 2.0 message journaled", source=self.name, edi_message_id=message_id,
                 apprec=None if is_apprec else status)


def _decode(document: dict[str, Any], max_bytes: int) -> tuple[bytes, XmlRejected | None]:
    """The business document's bytes; undecodable base64 is journaled as received and
    answered with AppRec T01 (a message is never dropped for being bad)."""
    raw = str(document.get("businessDocument") or "")
    try:
        body = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw.encode("utf-8", errors="replace")[:max_bytes], XmlRejected(
            "T01", "the business document is not valid base64")
    return body, None


class MsgHeadAdapter:
    """Reads AppRecs and Dialogmelding answers (options: `destination`, the edi2
    destination whose messages this inbox's receipts settle)."""

    def __init__(self, setup: AdapterSetup) -> None:
        self.source = setup.source
        destination = setup.options.get("destination")
        self.destination = str(destination) if destination else None
        self.max_bytes = int(setup.options.get("max_body_bytes", DEFAULT_MAX_BYTES))

    def intake_key(self, request: IntakeRequest) -> str | None:
        """For an HTTP or folder source carrying MsgHead/AppRec: the MsgId/Id is the key."""
        try:
            doc = read_message(request.body, max_bytes=self.max_bytes)
        except XmlRejected as exc:
            raise InputError("invalid-xml", f"{exc.code}: {exc.reason}", 400) from None
        return doc.id if isinstance(doc, AppRec) else doc.msg_id

    def parse(self, message: StoredMessage) -> list[Event]:
        try:
            doc = read_message(message.body, max_bytes=self.max_bytes)
        except XmlRejected as exc:
            raise ValueError(f"AppRec {exc.code}: {exc.reason}") from None
        if isinstance(doc, AppRec):
            detail = (f"AppRec {doc.status.value} ({APPREC_STATUS_TEXT[doc.status]}) from "
                      f"HER-id {doc.sender_her_id or '?'}")
            if doc.errors:
                detail += f": {doc.error_codes()}"
            return [Event(
                source=message.source, business_key=f"apprec|{doc.id or message.dedup_key}",
                kind=APPREC, category=Category.DEVICE_HEALTH,  # the delivery's, once found
                occurred_at=message.received_at, device=DeviceRef(f"her:{doc.sender_her_id}"),
                detail=detail,
                receipt=Receipt(doc.original_msg_id, RECEIPT_STATUS[doc.status], detail,
                                self.destination),
            )]
        if not doc.is_dialog:
            raise ValueError(f"MsgHead type {doc.msg_type} is not taken by this inbox (only "
                             "AppRec and Dialogmelding answers)")
        if doc.conversation is None:
            raise ValueError(f"Dialogmelding {doc.msg_id} has no ConversationRef: it answers "
                             "nothing we sent")
        # The conversation is the MsgId of what we sent (we start every conversation).
        correlation = doc.conversation.ref_to_conversation or doc.conversation.ref_to_parent
        return [Event(
            source=message.source, business_key=f"answer|{doc.msg_id}", kind=GP_ANSWER,
            category=Category.DEVICE_HEALTH,  # replaced by the answered event's category
            occurred_at=message.received_at, device=DeviceRef(f"her:{doc.sender_her_id}"),
            receipt=Receipt(correlation, ReceiptStatus.ANSWER, "answer", self.destination),
            extra={"msg_id": doc.msg_id, "subject": doc.subject, "text": "\n\n".join(doc.texts),
                   "sender_her_id": doc.sender_her_id, "sender_name": doc.sender_name,
                   "patient_id": doc.patient_id, "sent": _instant(doc.generated_at)},
        )]


def _instant(value: str | None) -> str | None:
    """MsgHead GenDate as a FHIR dateTime: a time without zone is Norwegian time."""
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=OSLO)).isoformat()


def _factory(name: str, settings: Edi2InboxSettings, intake: Any) -> Edi2Inbox:
    return Edi2Inbox(name, settings, intake)


@hookimpl(trylast=True)
def hub_register_sources(register: RegisterSource) -> None:
    register(SourceType("edi2-inbox", Edi2InboxSettings, _factory))


@hookimpl(trylast=True)
def hub_register_adapters(register: RegisterAdapter) -> None:
    register("msghead", MsgHeadAdapter)
