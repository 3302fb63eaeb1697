"""Every XML parse, build and schema check of GP messaging: the one module importing lxml.

Hardened parsing (`parse_document`): no DTD at all (a DOCTYPE is refused, so there are no
external entities and no entity-expansion bombs), no network, no XInclude, a size limit
and a nesting-depth limit, and only UTF-8 or ISO-8859-1 (with US-ASCII as its subset).
Every refusal is an `XmlRejected` with the AppRec error code (code system 8221) the
receiver of a bad message should get back, and a reason naming what was wrong.

Builders write MsgHead v1.2 around Dialogmelding 1.1 (DIALOG_HELSEFAGLIG) or PLO
HELSEOPPLYSNINGER_LEGE in UTF-8 or ISO-8859-1; characters outside ISO-8859-1 become
character references, so nothing is lost in either encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from lxml import etree

from hub.errors import HubError
from hub.messaging.model import (
    APPREC_10_NS,
    APPREC_11_NS,
    APPREC_ERROR_OID,
    APPREC_STATUS_OID,
    APPREC_STATUS_TEXT,
    DIALOG_10_NS,
    DIALOG_11_NS,
    DIALOG_HELSEFAGLIG,
    DIALOG_TEMA_OID,
    FORESPORSEL_TYPE_OID,
    FORESPORSEL_TYPES,
    FORMAT_NOT_SUPPORTED,
    HELSEOPPLYSNINGER_LEGE,
    HER_OID,
    ID_TYPE_OID,
    MSGHEAD_NS,
    MSGHEAD_VERSION,
    NOT_XML,
    OTHER_FORMAT_ERROR,
    PLO_HELSEOPPLYSNINGER_LEGE_NS,
    PO_KOMPONENT_NS,
    AppRec,
    AppRecError,
    AppRecStatus,
    ConversationRef,
    InboundMessage,
    OutgoingMessage,
    Party,
    SchemaReport,
)

DEFAULT_MAX_BYTES = 5 * 1024 * 1024  # MsgHead with attachments stays far below this
DEFAULT_MAX_DEPTH = 64  # a MsgHead with PLO content nests about 15 deep
ACCEPTED_ENCODINGS = frozenset({"UTF-8", "ISO-8859-1", "US-ASCII", "ASCII"})


class XmlRejected(HubError):
    """A document that cannot be taken: `code` is its AppRec error code (8221)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _parser() -> etree.XMLParser:
    # A new parser per parse: lxml parsers are not safe to share between threads.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_comments=True, remove_pis=True, collect_ids=False,
        attribute_defaults=False,
    )


def parse_document(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse untrusted XML bytes; returns the root element or raises XmlRejected."""
    if len(data) > max_bytes:
        raise XmlRejected(OTHER_FORMAT_ERROR, f"the document is {len(data)} bytes; the limit "
                          f"is {max_bytes}")
    if not data.strip():
        raise XmlRejected(NOT_XML, "the document is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00<", b"<\x00")):
        raise XmlRejected(FORMAT_NOT_SUPPORTED, "UTF-16/32 documents are not accepted; "
                          "send UTF-8 or ISO-8859-1")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise XmlRejected(NOT_XML, "the document has a DOCTYPE or an entity declaration; "
                          "DTDs are refused (no external entities, no entity expansion)")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        if "Excessive depth" in str(exc.msg):
            raise XmlRejected(OTHER_FORMAT_ERROR, f"elements nest deeper than {max_depth} "
                              "levels") from None
        line = f" (line {exc.lineno})" if exc.lineno else ""
        raise XmlRejected(NOT_XML, f"not well-formed XML: {exc.msg}{line}") from None
    except ValueError as exc:  # e.g. an unknown encoding declaration
        raise XmlRejected(NOT_XML, f"not readable as XML: {exc}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlRejected(NOT_XML, "the document has a DOCTYPE; DTDs are refused")
    encoding = (tree.docinfo.encoding or "UTF-8").upper()
    if encoding not in ACCEPTED_ENCODINGS:
        raise XmlRejected(FORMAT_NOT_SUPPORTED, f"encoding {encoding} is not accepted; send "
                          "UTF-8 or ISO-8859-1")
    depth = deepest = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                raise XmlRejected(OTHER_FORMAT_ERROR, f"elements nest deeper than {max_depth} "
                                  "levels")
    return root


# -------------------------------------------------------------------------------------
# Building
# -------------------------------------------------------------------------------------


def _el(parent: Any, ns: str, tag: str, text: str | None = None, **attrs: str) -> Any:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}")
    for key, value in attrs.items():
        element.set(key, value)
    if text is not None:
        element.text = text
    return element


def _ident(parent: Any, value: str, type_v: str, type_dn: str, oid: str = ID_TYPE_OID) -> None:
    ident = _el(parent, MSGHEAD_NS, "Ident")
    _el(ident, MSGHEAD_NS, "Id", value)
    _el(ident, MSGHEAD_NS, "TypeId", V=type_v, DN=type_dn, S=oid)


def _organisation(parent: Any, party: Party) -> None:
    org = _el(parent, MSGHEAD_NS, "Organisation")
    _el(org, MSGHEAD_NS, "OrganisationName", party.name)
    _ident(org, party.her_id, "HER", "HER-id", HER_OID)
    if party.unit_her_id:
        unit = _el(org, MSGHEAD_NS, "Organisation")
        _el(unit, MSGHEAD_NS, "OrganisationName", party.unit_name or party.name)
        _ident(unit, party.unit_her_id, "HER", "HER-id", HER_OID)
    if party.person_her_id:
        person = _el(org, MSGHEAD_NS, "HealthcareProfessional")
        names = (party.person_name or "").rsplit(" ", 1)
        if len(names) == 2:
            _el(person, MSGHEAD_NS, "FamilyName", names[1])
            _el(person, MSGHEAD_NS, "GivenName", names[0])
        elif names[0]:
            _el(person, MSGHEAD_NS, "FamilyName", names[0])
        _ident(person, party.person_her_id, "HER", "HER-id", HER_OID)


def _gen_date(at: datetime) -> str:
    return at.replace(microsecond=0).isoformat()


def build_message(msg: OutgoingMessage) -> bytes:
    """MsgHead v1.2 with the message as XML content, serialised in `msg.encoding`."""
    root = etree.Element(f"{{{MSGHEAD_NS}}}MsgHead", nsmap={None: MSGHEAD_NS})
    info = _el(root, MSGHEAD_NS, "MsgInfo")
    if msg.kind == "dialogmelding":
        _el(info, MSGHEAD_NS, "Type", V=DIALOG_HELSEFAGLIG, DN="Helsefaglig dialog")
    else:
        _el(info, MSGHEAD_NS, "Type", V=HELSEOPPLYSNINGER_LEGE, DN="Helseopplysninger til lege")
    _el(info, MSGHEAD_NS, "MIGversion", MSGHEAD_VERSION)
    _el(info, MSGHEAD_NS, "GenDate", _gen_date(msg.generated_at))
    _el(info, MSGHEAD_NS, "MsgId", msg.msg_id)
    ref = _el(info, MSGHEAD_NS, "ConversationRef")
    _el(ref, MSGHEAD_NS, "RefToParent", msg.conversation.ref_to_parent)
    _el(ref, MSGHEAD_NS, "RefToConversation", msg.conversation.ref_to_conversation)
    _organisation(_el(info, MSGHEAD_NS, "Sender"), msg.sender)
    _organisation(_el(info, MSGHEAD_NS, "Receiver"), msg.receiver)
    patient = _el(info, MSGHEAD_NS, "Patient")
    if msg.patient.family_name:
        _el(patient, MSGHEAD_NS, "FamilyName", msg.patient.family_name)
    if msg.patient.given_name:
        _el(patient, MSGHEAD_NS, "GivenName", msg.patient.given_name)
    _ident(patient, msg.patient.id, msg.patient.id_type,
           {"FNR": "Fødselsnummer", "DNR": "D-nummer", "HNR": "H-nummer"}[msg.patient.id_type])
    document = _el(root, MSGHEAD_NS, "Document")
    refdoc = _el(document, MSGHEAD_NS, "RefDoc")
    _el(refdoc, MSGHEAD_NS, "MsgType", V="XML", DN="XML-instans")
    content = _el(refdoc, MSGHEAD_NS, "Content")
    if msg.kind == "dialogmelding":
        _dialogmelding(content, msg)
    else:
        _plo_helseopplysninger_lege(content, msg)
    return bytes(etree.tostring(root, xml_declaration=True, encoding=msg.encoding))


def _dialogmelding(content: Any, msg: OutgoingMessage) -> None:
    """Dialogmelding 1.1, helsefaglig dialog: one Foresporsel (a question that expects
    an answer; type from code system 9152) or one Notat (theme from 7322)."""
    dialog = etree.SubElement(content, f"{{{DIALOG_11_NS}}}Dialogmelding",
                              nsmap={None: DIALOG_11_NS})
    if msg.dialog_part == "foresporsel":
        part = _el(dialog, DIALOG_11_NS, "Foresporsel")
        _el(part, DIALOG_11_NS, "TypeForesp", V=msg.question_type,
            DN=FORESPORSEL_TYPES.get(msg.question_type, msg.question_type),
            S=FORESPORSEL_TYPE_OID)
        _el(part, DIALOG_11_NS, "EmneSporsmal", msg.subject)
        question = "\n\n".join(p for p in (msg.text, msg.question) if p)
        _el(part, DIALOG_11_NS, "Sporsmal", question)
        _el(part, DIALOG_11_NS, "DokIdForesp", msg.msg_id)
    else:
        part = _el(dialog, DIALOG_11_NS, "Notat")
        _el(part, DIALOG_11_NS, "TemaKodet", V=msg.dialog_theme, DN=msg.dialog_theme_text,
            S=DIALOG_TEMA_OID)
        _el(part, DIALOG_11_NS, "Tema", msg.subject)
        _el(part, DIALOG_11_NS, "TekstNotatInnhold", msg.text)
        _el(part, DIALOG_11_NS, "DokIdNotat", msg.msg_id)
    if msg.contact_name or msg.contact_phone:
        role = _el(part, DIALOG_11_NS, "RollerRelatertNotat")
        _el(role, DIALOG_11_NS, "RoleToPatient", V="6", DN="Kontaktperson",
            S="2.16.578.1.12.4.1.1.9034")
        person = _el(role, DIALOG_11_NS, "HealthcareProfessional")
        if msg.contact_name:
            _el(person, DIALOG_11_NS, "FamilyName", msg.contact_name)
        if msg.contact_phone:
            tele = _el(person, DIALOG_11_NS, "TeleCom")
            _el(tele, DIALOG_11_NS, "TeleAddress", V=f"tel:{msg.contact_phone}")


def _plo_helseopplysninger_lege(content: Any, msg: OutgoingMessage) -> None:
    """PLO HELSEOPPLYSNINGER_LEGE (2012-04-01) with poKomponent parts: the shipment's
    status (7309 N = new) and one "other important information" note with the text."""
    root = etree.SubElement(
        content, f"{{{PLO_HELSEOPPLYSNINGER_LEGE_NS}}}HelseopplysningerLege",
        nsmap={None: PLO_HELSEOPPLYSNINGER_LEGE_NS, "po": PO_KOMPONENT_NS})
    shipment = _el(root, PO_KOMPONENT_NS, "InformasjonOmForsendelsen")
    _el(shipment, PO_KOMPONENT_NS, "Forsendelsesstatus", V="N", DN="Ny",
        S="2.16.578.1.12.4.1.1.7309")
    _el(shipment, PO_KOMPONENT_NS, "DokumentId", msg.msg_id)
    info = _el(root, PO_KOMPONENT_NS, "InfoAndreViktigeOpplysninger")
    _el(info, PO_KOMPONENT_NS, "Overskrift", msg.subject)
    _el(info, PO_KOMPONENT_NS, "Merknad", msg.text)
    if msg.contact_name or msg.contact_phone:
        contact = _el(root, PO_KOMPONENT_NS, "KontaktpersonHelsepersonell")
        if msg.contact_name:
            _el(contact, PO_KOMPONENT_NS, "Navn", msg.contact_name)
        if msg.contact_phone:
            _el(contact, PO_KOMPONENT_NS, "Telefon", msg.contact_phone)


# -------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------


def _text(element: Any | None) -> str | None:
    if element is None:
        return None
    value = (element.text or "").strip()
    return value or None


def _find(element: Any, path: str, ns: str) -> Any | None:
    return element.find(path.replace("m:", f"{{{ns}}}"))


def _her_id(party: Any | None, ns: str) -> str | None:
    """The HER-id of an MsgHead Sender/Receiver: the most specific one given."""
    if party is None:
        return None
    found = None
    for ident in party.iter(f"{{{ns}}}Ident"):
        type_id = ident.find(f"{{{ns}}}TypeId")
        if type_id is not None and type_id.get("V") == "HER":
            found = _text(ident.find(f"{{{ns}}}Id")) or found
    return found


def read_message(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_depth: int = DEFAULT_MAX_DEPTH) -> AppRec | InboundMessage:
    """Read an inbound business document: an AppRec (1.0 or 1.1) or a MsgHead."""
    root = parse_document(data, max_bytes=max_bytes, max_depth=max_depth)
    ns = etree.QName(root).namespace
    local = etree.QName(root).localname
    if local == "AppRec" and ns in (APPREC_10_NS, APPREC_11_NS):
        return _read_apprec(root, ns)
    if local == "MsgHead" and ns == MSGHEAD_NS:
        return _read_msghead(root)
    raise XmlRejected(FORMAT_NOT_SUPPORTED, f"unsupported document {{{ns}}}{local}; expected "
                      "MsgHead v1.2 or AppRec 1.0/1.1")


def _read_apprec(root: Any, ns: str) -> AppRec:
    version = "1.1" if ns == APPREC_11_NS else "1.0"
    status_el = _find(root, "m:Status", ns)
    status_v = status_el.get("V") if status_el is not None else None
    try:
        status = AppRecStatus(status_v or "")
    except ValueError:
        raise XmlRejected(OTHER_FORMAT_ERROR, f"AppRec Status/@V is {status_v!r}; code system "
                          "8258 has 1 (OK), 2 (Avvist), 3 (OK, feil i delmelding)") from None
    original = _text(_find(root, "m:OriginalMsgId/m:Id", ns))
    if not original:
        raise XmlRejected(OTHER_FORMAT_ERROR, "AppRec has no OriginalMsgId/Id")
    msg_type = _find(root, "m:OriginalMsgId/m:MsgType", ns)
    errors = []
    for err in root.findall(f"{{{ns}}}Error"):
        description = (_text(err.find(f"{{{ns}}}Description"))
                       or _text(err.find(f"{{{ns}}}Details")) or "")
        errors.append(AppRecError(err.get("V") or "?", err.get("DN") or "", description))
    return AppRec(
        version=version, id=_text(_find(root, "m:Id", ns)) or "", status=status,
        original_msg_id=original,
        original_msg_type=msg_type.get("V") if msg_type is not None else None,
        sender_her_id=_apprec_her(_find(root, "m:Sender", ns), ns),
        receiver_her_id=_apprec_her(_find(root, "m:Receiver", ns), ns),
        errors=tuple(errors),
    )


def _apprec_her(party: Any | None, ns: str) -> str | None:
    if party is None:
        return None
    ids = [_text(e) for e in party.iter(f"{{{ns}}}Id")]
    ids = [i for i in ids if i]
    return ids[-1] if ids else None  # the most specific (department) if given


def _read_msghead(root: Any) -> InboundMessage:
    ns = MSGHEAD_NS
    info = _find(root, "m:MsgInfo", ns)
    if info is None:
        raise XmlRejected(OTHER_FORMAT_ERROR, "MsgHead has no MsgInfo")
    type_el = _find(info, "m:Type", ns)
    msg_type = type_el.get("V") if type_el is not None else None
    msg_id = _text(_find(info, "m:MsgId", ns))
    if not msg_type or not msg_id:
        raise XmlRejected(OTHER_FORMAT_ERROR, "MsgHead has no MsgInfo/Type/@V or MsgInfo/MsgId")
    conversation = None
    ref = _find(info, "m:ConversationRef", ns)
    if ref is not None:
        parent = _text(_find(ref, "m:RefToParent", ns))
        conv = _text(_find(ref, "m:RefToConversation", ns))
        if parent or conv:
            conversation = ConversationRef(parent or conv or "", conv or parent or "")
    sender = _find(info, "m:Sender", ns)
    patient_ident = _find(info, "m:Patient/m:Ident", ns)
    content_root = None
    for content in root.iter(f"{{{ns}}}Content"):
        children = [c for c in content if isinstance(c.tag, str)]
        if children:
            content_root = children[0]
            break
    content_ns = etree.QName(content_root).namespace if content_root is not None else None
    subject = None
    texts: list[str] = []
    if content_root is not None and content_ns in (DIALOG_11_NS, DIALOG_10_NS):
        dn = content_ns
        for notat in content_root.iter(f"{{{dn}}}Notat"):
            subject = subject or _text(notat.find(f"{{{dn}}}Tema"))
            texts.extend(t for t in [_text(notat.find(f"{{{dn}}}TekstNotatInnhold"))] if t)
        for question in content_root.iter(f"{{{dn}}}Foresporsel"):
            subject = subject or _text(question.find(f"{{{dn}}}EmneSporsmal"))
            texts.extend(t for t in [_text(question.find(f"{{{dn}}}Sporsmal"))] if t)
    elif content_root is not None and content_ns == PLO_HELSEOPPLYSNINGER_LEGE_NS:
        subject = _text(content_root.find(f".//{{{PO_KOMPONENT_NS}}}Overskrift"))
        texts.extend(t for t in (_text(e) for e in content_root.iter(
            f"{{{PO_KOMPONENT_NS}}}Merknad")) if t)
    id_type = (_find(patient_ident, "m:TypeId", ns) if patient_ident is not None else None)
    return InboundMessage(
        msg_type=msg_type, msg_id=msg_id, generated_at=_text(_find(info, "m:GenDate", ns)),
        conversation=conversation,
        sender_name=_text(_find(info, "m:Sender/m:Organisation/m:OrganisationName", ns)),
        sender_her_id=_her_id(sender, ns),
        receiver_her_id=_her_id(_find(info, "m:Receiver", ns), ns),
        patient_id=_text(_find(patient_ident, "m:Id", ns)) if patient_ident is not None
        else None,
        patient_id_type=id_type.get("V") if id_type is not None else None,
        content_namespace=content_ns, subject=subject, texts=tuple(texts),
    )


def build_apprec(*, apprec_id: str, generated_at: datetime, status: AppRecStatus,
                 sender: Party, receiver: Party, original_msg_id: str,
                 original_msg_type: str, original_issued: str | None = None,
                 errors: Iterable[AppRecError] = (), encoding: str = "UTF-8") -> bytes:
    """An AppRec 1.1 document (for tools and tests; EDI 2.0 takes a simplified AppRec
    as JSON, see hub.destinations.edi)."""
    ns = APPREC_11_NS
    root = etree.Element(f"{{{ns}}}AppRec", nsmap={None: ns})
    _el(root, ns, "MsgType", V="APPREC")
    _el(root, ns, "MIGversion", "v1.1 2012-02-15")
    _el(root, ns, "GenDate", _gen_date(generated_at))
    _el(root, ns, "Id", apprec_id)
    for tag, role, party in (("Sender", "PRIM", sender), ("Receiver", "AVS", receiver)):
        el = _el(root, ns, tag)
        _el(el, ns, "Role", V=role)
        inst = _el(_el(el, ns, "HCP"), ns, "Inst")
        _el(inst, ns, "Name", party.name)
        _el(inst, ns, "Id", party.her_id)
        _el(inst, ns, "TypeId", V="HER", DN="HER-id", S=HER_OID)
    _el(root, ns, "Status", V=status.value, DN=APPREC_STATUS_TEXT[status], S=APPREC_STATUS_OID)
    for err in errors:
        e = _el(root, ns, "Error", V=err.code, DN=err.text, S=APPREC_ERROR_OID)
        if err.description:
            _el(e, ns, "Description", err.description)
    orig = _el(root, ns, "OriginalMsgId")
    _el(orig, ns, "MsgType", V=original_msg_type)
    _el(orig, ns, "IssueDate", original_issued or _gen_date(generated_at))
    _el(orig, ns, "Id", original_msg_id)
    return bytes(etree.tostring(root, xml_declaration=True, encoding=encoding))


# -------------------------------------------------------------------------------------
# Schemas
# -------------------------------------------------------------------------------------


class SchemaSet:
    """The XSDs of a directory, by target namespace (a municipality's copy of the
    official KITH/e-helse schemas, or our own). Loaded once; imports are resolved from
    the files' own folder, never from the network."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.schemas: dict[str, Any] = {}
        problems = []
        for path in sorted(directory.rglob("*.xsd")):
            try:
                doc = etree.parse(str(path), _parser())
                target = doc.getroot().get("targetNamespace")
                if target and target not in self.schemas:
                    self.schemas[target] = etree.XMLSchema(doc)
            except (etree.XMLSyntaxError, etree.XMLSchemaParseError, OSError) as exc:
                problems.append(f"{path}: {exc}")
        if problems:
            raise HubError("cannot load the XSDs: " + "; ".join(problems[:5]))

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(sorted(self.schemas))

    def validate(self, data: bytes) -> SchemaReport:
        """Validate the document against its root namespace's schema and, separately,
        each Content payload against its own namespace's schema (MsgHead declares
        Content as `any`)."""
        root = parse_document(data)
        parts = [root]
        ns = etree.QName(root).namespace
        if ns == MSGHEAD_NS:
            for content in root.iter(f"{{{MSGHEAD_NS}}}Content"):
                parts.extend(c for c in content if isinstance(c.tag, str))
        validated: list[str] = []
        missing: list[str] = []
        problems: list[str] = []
        for part in parts:
            part_ns = etree.QName(part).namespace or ""
            schema = self.schemas.get(part_ns)
            if schema is None:
                missing.append(part_ns)
                continue
            validated.append(part_ns)
            copy = etree.fromstring(etree.tostring(part), _parser())
            if not schema.validate(copy):
                problems.extend(f"{part_ns}: line {e.line}: {e.message}"
                                for e in list(schema.error_log)[:10])
        return SchemaReport(tuple(validated), tuple(missing), tuple(problems))

