"""A local EDI 2.0 ("Meldingstjener") REST peer, written from NHN's published API.

Why: NHN's service is not reachable from tests. This peer speaks the same HTTP interface
(domain.md §2.3) on 127.0.0.1 with real sockets, checks what it receives as the real one
would (source-system header, base64, well-formed XML, a MsgHead whose sender and receiver
HER-ids it knows) and answers errors as problem JSON. Its test-control side lets a test
act as the GP: answer a received message with an AppRec (1/2/3 with 8221 codes), reply
with a Dialogmelding, or make the next POSTs fail with 503/429.

It builds its AppRecs and answers with lxml on its own, never with hub code, so a test
that passes shows the hub reads what an independent writer wrote.

Endpoints: POST /Messages, GET /Messages/{id}/Status, GET /Messages/Unread,
GET /Messages/{id}/BusinessDocument, PUT /Messages/{id}/Read/{herId},
POST /Messages/{id}/Apprec/{herId}.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._asgi import AppPeer

MSGHEAD = "http://www.kith.no/xmlstds/msghead/2006-05-24"
APPREC11 = "http://www.kith.no/xmlstds/apprec/2012-02-15"
APPREC10 = "http://www.kith.no/xmlstds/apprec/2004-11-21"
DIALOG11 = "http://www.kith.no/xmlstds/dialog/2013-01-23"
APPREC_STATUSES = {"Ok", "Rejected", "OkErrorInMessagePart"}
STATUS_TEXT = {"1": "OK", "2": "Avvist", "3": "OK, feil i delmelding"}


@dataclass
class PeerMessage:
    id: str
    sender_her_id: str
    receiver_her_id: str
    document: bytes
    is_apprec: bool
    msg_id: str | None = None  # the MsgHead's MsgId (or the AppRec's Id)
    msg_type: str | None = None
    read_by: set[str] = field(default_factory=set)
    apprecs: list[dict[str, Any]] = field(default_factory=list)  # simplified AppRecs got
    source_system: str | None = None
    authorization: str | None = None
    dialog_part: str | None = None  # Dialogmelding 1.1 content: "Foresporsel" or "Notat"
    transport_state: str = "Acknowledged"  # what GET /Messages/{id}/Status reports
    status_asked: int = 0


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status,
                         "detail": detail}, status_code=status,
                        media_type="application/problem+json")


def _safe_parse(data: bytes) -> Any:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(data, parser)


def _her_of(party: Any) -> str | None:
    found = None
    for ident in party.iter(f"{{{MSGHEAD}}}Ident"):
        type_id = ident.find(f"{{{MSGHEAD}}}TypeId")
        if type_id is not None and type_id.get("V") == "HER":
            found = (ident.findtext(f"{{{MSGHEAD}}}Id") or "").strip() or found
    return found


class Edi2Peer(AppPeer):
    """Usage::

        with Edi2Peer(known_her_ids={"1001", "2001"}) as edi:
            ...hub sends to edi.url...
            (msg,) = edi.wait_for_messages(1)
            edi.gp_apprec(msg, "1")
    """

    def __init__(self, known_her_ids: set[str]) -> None:
        self.known = set(known_her_ids)
        self._messages: dict[str, PeerMessage] = {}
        self._lock = threading.Condition()
        self._failures: list[tuple[int, dict[str, str]]] = []
        # The transport state a newly posted message starts in (Unconfirmed: the
        # receiver's message handler has not acknowledged it yet).
        self.next_transport_state = "Acknowledged"
        self.app = Starlette(routes=[
            Route("/Messages", self._post_message, methods=["POST"]),
            Route("/Messages/Unread", self._unread, methods=["GET"]),
            Route("/Messages/{id}/Status", self._status, methods=["GET"]),
            Route("/Messages/{id}/BusinessDocument", self._business_document, methods=["GET"]),
            Route("/Messages/{id}/Read/{her_id}", self._read, methods=["PUT"]),
            Route("/Messages/{id}/Apprec/{her_id}", self._apprec, methods=["POST"]),
        ])
        super().__init__("edi2-peer")

    # -- HTTP side -------------------------------------------------------------------------

    def _check_source_system(self, request: Request) -> JSONResponse | None:
        if not request.headers.get("nhn-source-system"):
            return problem(400, "Missing header", "the nhn-source-system header is required")
        return None

    async def _post_message(self, request: Request) -> Response:
        if (bad := self._check_source_system(request)) is not None:
            return bad
        with self._lock:
            if self._failures:
                status, headers = self._failures.pop(0)
                return JSONResponse({"title": "Injected failure", "status": status},
                                    status_code=status, headers=headers)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return problem(400, "Invalid JSON", "the request body is not JSON")
        if not isinstance(body, dict) or not body.get("businessDocument"):
            return problem(400, "Missing businessDocument", "businessDocument is required")
        if body.get("contentType") != "application/xml":
            return problem(400, "Unsupported content type",
                           f"contentType {body.get('contentType')!r} is not application/xml")
        try:
            document = base64.b64decode(str(body["businessDocument"]), validate=True)
        except (binascii.Error, ValueError):
            return problem(400, "Invalid base64", "businessDocument is not valid base64")
        try:
            root = _safe_parse(document)
        except etree.XMLSyntaxError as exc:
            return problem(400, "Invalid XML", f"businessDocument is not well-formed: {exc}")
        if root.tag != f"{{{MSGHEAD}}}MsgHead":
            return problem(400, "Not a MsgHead", f"root element is {root.tag}")
        info = root.find(f"{{{MSGHEAD}}}MsgInfo")
        sender = info.find(f"{{{MSGHEAD}}}Sender") if info is not None else None
        receiver = info.find(f"{{{MSGHEAD}}}Receiver") if info is not None else None
        if sender is None or receiver is None:
            return problem(400, "Invalid MsgHead", "MsgInfo/Sender and Receiver are required")
        sender_her, receiver_her = _her_of(sender), _her_of(receiver)
        if sender_her not in self.known:
            return problem(400, "Sender not found", f"sender HER-id {sender_her} is not in "
                           "Adresseregisteret")
        if receiver_her not in self.known:
            return problem(400, "Receiver not found", f"receiver HER-id {receiver_her} is not "
                           "in Adresseregisteret")
        type_el = info.find(f"{{{MSGHEAD}}}Type")
        dialog = root.find(f".//{{{DIALOG11}}}Dialogmelding")
        parts = [etree.QName(c).localname for c in dialog if isinstance(c.tag, str)] \
            if dialog is not None else []
        message = PeerMessage(
            id=str(uuid.uuid4()), sender_her_id=sender_her or "",
            receiver_her_id=receiver_her or "",
            document=document, is_apprec=False,
            msg_id=(info.findtext(f"{{{MSGHEAD}}}MsgId") or "").strip(),
            msg_type=type_el.get("V") if type_el is not None else None,
            source_system=request.headers.get("nhn-source-system"),
            authorization=request.headers.get("authorization"),
            dialog_part=parts[0] if parts else None, transport_state=self.next_transport_state)
        with self._lock:
            self._messages[message.id] = message
            self._lock.notify_all()
        return JSONResponse(message.id, status_code=201)

    async def _unread(self, request: Request) -> Response:
        if (bad := self._check_source_system(request)) is not None:
            return bad
        her_ids = [h for v in request.query_params.getlist("receiverHerIds") for h in v.split(",")]
        if not her_ids:
            return problem(400, "Missing receiverHerIds", "receiverHerIds is required")
        with self._lock:
            items = [{"id": m.id, "receiverHerId": m.receiver_her_id,
                      "senderHerId": m.sender_her_id, "contentType": "application/xml",
                      "isAppRec": m.is_apprec}
                     for m in self._messages.values()
                     if m.receiver_her_id in her_ids and m.receiver_her_id not in m.read_by]
        return JSONResponse(items)

    def _get(self, message_id: str) -> PeerMessage | None:
        with self._lock:
            return self._messages.get(message_id)

    async def _status(self, request: Request) -> Response:
        m = self._get(request.path_params["id"])
        if m is None:
            return problem(404, "Not found", "no such message")
        status = m.apprecs[-1]["appRecStatus"] if m.apprecs else None
        with self._lock:
            m.status_asked += 1
        return JSONResponse([{"receiverHerId": int(m.receiver_her_id),
                              "transportDeliveryState": m.transport_state,
                              "sent": True, "appRecStatus": status}])

    async def _business_document(self, request: Request) -> Response:
        m = self._get(request.path_params["id"])
        if m is None:
            return problem(404, "Not found", "no such message")
        return JSONResponse({"businessDocument": base64.b64encode(m.document).decode(),
                             "contentType": "application/xml",
                             "contentTransferEncoding": "base64"})

    async def _read(self, request: Request) -> Response:
        m = self._get(request.path_params["id"])
        if m is None:
            return problem(404, "Not found", "no such message")
        her_id = request.path_params["her_id"]
        if her_id != m.receiver_her_id:
            return problem(400, "Not the receiver", f"HER-id {her_id} did not receive it")
        with self._lock:
            m.read_by.add(her_id)
        return Response(status_code=204)

    async def _apprec(self, request: Request) -> Response:
        m = self._get(request.path_params["id"])
        if m is None:
            return problem(404, "Not found", "no such message")
        if m.is_apprec:
            return problem(400, "AppRec for an AppRec", "an AppRec is never receipted")
        her_id = request.path_params["her_id"]
        if her_id != m.receiver_her_id:
            return problem(400, "Not the receiver", f"HER-id {her_id} did not receive it")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return problem(400, "Invalid JSON", "the request body is not JSON")
        status = body.get("appRecStatus")
        errors = body.get("appRecErrorList") or []
        if status not in APPREC_STATUSES:
            return problem(400, "Invalid appRecStatus", f"{status!r} is not one of "
                           f"{sorted(APPREC_STATUSES)}")
        if status != "Ok" and not errors:
            return problem(400, "Missing errors", "a rejected AppRec needs appRecErrorList")
        with self._lock:
            m.apprecs.append(body)
            self._lock.notify_all()
        return JSONResponse(str(uuid.uuid4()), status_code=201)

    # -- test control: act as the GP ---------------------------------------------------------

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        headers = {"retry-after": retry_after} if retry_after else {}
        with self._lock:
            self._failures.extend([(status, headers)] * times)

    def set_transport_state(self, message: PeerMessage, state: str) -> None:
        """What the receiver's message handler did with a message, as EDI 2.0 reports it:
        Unconfirmed, Acknowledged, Rejected (ebXML MessageError), Abandoned, Unknown."""
        with self._lock:
            message.transport_state = state

    def messages(self, *, to: str | None = None) -> list[PeerMessage]:
        with self._lock:
            return [m for m in self._messages.values()
                    if not m.is_apprec and (to is None or m.receiver_her_id == to)]

    def wait_for_messages(self, n: int, *, to: str | None = None,
                          timeout: float = 20.0) -> list[PeerMessage]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(found := self.messages(to=to)) < n:
                if not self._lock.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"only {len(found)} of {n} messages after {timeout} s")
            return found

    def wait_for_apprec(self, message_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._messages[message_id].apprecs:
                if not self._lock.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no AppRec for {message_id} after {timeout} s")
            return self._messages[message_id].apprecs[-1]

    def is_read(self, message_id: str) -> bool:
        with self._lock:
            m = self._messages[message_id]
            return m.receiver_her_id in m.read_by

    def deliver(self, sender_her_id: str, receiver_her_id: str, document: bytes,
                is_apprec: bool = False) -> str:
        """Put a message from someone into a receiver's inbox (any bytes: hostile too)."""
        message = PeerMessage(str(uuid.uuid4()), sender_her_id, receiver_her_id, document,
                              is_apprec)
        with self._lock:
            self._messages[message.id] = message
        return message.id

    def gp_apprec(self, original: PeerMessage, status: str,
                  errors: list[tuple[str, str]] = (),  # type: ignore[assignment]
                  version: str = "1.1") -> str:
        """The GP's system answers `original` with an AppRec (1 OK, 2 Avvist, 3 partial)."""
        ns = APPREC11 if version == "1.1" else APPREC10
        root = etree.Element(f"{{{ns}}}AppRec", nsmap={None: ns})

        def sub(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:
            el = etree.SubElement(parent, f"{{{ns}}}{tag}", attrs)
            el.text = text
            return el

        sub(root, "MsgType", V="APPREC")
        sub(root, "MIGversion", "v1.1 2012-02-15" if version == "1.1" else "v1.0 2004-11-21")
        sub(root, "GenDate", datetime.now(UTC).isoformat(timespec="seconds"))
        sub(root, "Id", str(uuid.uuid4()))
        for tag, role, her in (("Sender", "PRIM", original.receiver_her_id),
                               ("Receiver", "AVS", original.sender_her_id)):
            party = sub(root, tag)
            sub(party, "Role", V=role)
            inst = sub(sub(party, "HCP"), "Inst")
            sub(inst, "Name", "Legekontoret Åsen" if tag == "Sender" else "Kommunen")
            sub(inst, "Id", her)
            sub(inst, "TypeId", V="HER", DN="HER-id", S="2.16.578.1.12.4.1.1.9051")
        sub(root, "Status", V=status, DN=STATUS_TEXT[status], S="2.16.578.1.12.4.1.1.8258")
        for code, text in errors:
            sub(root, "Error", V=code, DN=text, S="2.16.578.1.12.4.1.1.8221")
        orig = sub(root, "OriginalMsgId")
        sub(orig, "MsgType", V=original.msg_type or "")
        sub(orig, "IssueDate", datetime.now(UTC).isoformat(timespec="seconds"))
        sub(orig, "Id", original.msg_id or "")
        document = etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")
        return self.deliver(original.receiver_her_id, original.sender_her_id, document,
                            is_apprec=True)

    def gp_reply(self, original: PeerMessage, text: str, *, subject: str = "Svar",
                 encoding: str = "ISO-8859-1") -> str:
        """The GP answers `original` with a Dialogmelding 1.1 in the same conversation."""
        m = MSGHEAD
        orig_root = _safe_parse(original.document)
        orig_info = orig_root.find(f"{{{m}}}MsgInfo")
        conversation = orig_info.findtext(f"{{{m}}}ConversationRef/{{{m}}}RefToConversation")
        patient = orig_info.find(f"{{{m}}}Patient")
        root = etree.Element(f"{{{m}}}MsgHead", nsmap={None: m})
        info = etree.SubElement(root, f"{{{m}}}MsgInfo")
        etree.SubElement(info, f"{{{m}}}Type", V="DIALOG_HELSEFAGLIG", DN="Helsefaglig dialog")
        etree.SubElement(info, f"{{{m}}}MIGversion").text = "v1.2 2006-05-24"
        etree.SubElement(info, f"{{{m}}}GenDate").text = datetime.now().strftime(
            "%Y-%m-%dT%H:%M:%S")
        reply_id = str(uuid.uuid4())
        etree.SubElement(info, f"{{{m}}}MsgId").text = reply_id
        ref = etree.SubElement(info, f"{{{m}}}ConversationRef")
        etree.SubElement(ref, f"{{{m}}}RefToParent").text = original.msg_id
        etree.SubElement(ref, f"{{{m}}}RefToConversation").text = conversation
        for tag, her, name in (("Sender", original.receiver_her_id, "Legekontoret Åsen"),
                               ("Receiver", original.sender_her_id, "Kommunen")):
            org = etree.SubElement(etree.SubElement(info, f"{{{m}}}{tag}"),
                                   f"{{{m}}}Organisation")
            etree.SubElement(org, f"{{{m}}}OrganisationName").text = name
            ident = etree.SubElement(org, f"{{{m}}}Ident")
            etree.SubElement(ident, f"{{{m}}}Id").text = her
            etree.SubElement(ident, f"{{{m}}}TypeId", V="HER", DN="HER-id",
                             S="2.16.578.1.12.4.1.1.9051")
        if patient is not None:
            info.append(patient)
        content = etree.SubElement(etree.SubElement(etree.SubElement(
            root, f"{{{m}}}Document"), f"{{{m}}}RefDoc"), f"{{{m}}}Content")
        dialog = etree.SubElement(content, f"{{{DIALOG11}}}Dialogmelding",
                                  nsmap={None: DIALOG11})
        notat = etree.SubElement(dialog, f"{{{DIALOG11}}}Notat")
        etree.SubElement(notat, f"{{{DIALOG11}}}TemaKodet", V="6", DN="Henvendelse om pasient",
                         S="2.16.578.1.12.4.1.1.7322")
        etree.SubElement(notat, f"{{{DIALOG11}}}Tema").text = subject
        etree.SubElement(notat, f"{{{DIALOG11}}}TekstNotatInnhold").text = text
        document = etree.tostring(root, xml_declaration=True, encoding=encoding)
        return self.deliver(original.receiver_her_id, original.sender_her_id, document)
