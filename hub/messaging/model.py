"""GP messages as data: what the hub sends (MsgHead + Dialogmelding/PLO) and what comes
back (AppRec, answers). No XML here: `hub.messaging.xml` reads and writes these."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

MSGHEAD_NS = "http://www.kith.no/xmlstds/msghead/2006-05-24"
MSGHEAD_VERSION = "v1.2 2006-05-24"
DIALOG_11_NS = "http://www.kith.no/xmlstds/dialog/2013-01-23"
DIALOG_10_NS = "http://www.kith.no/xmlstds/dialog/2006-10-11"
APPREC_10_NS = "http://www.kith.no/xmlstds/apprec/2004-11-21"
APPREC_11_NS = "http://www.kith.no/xmlstds/apprec/2012-02-15"
PLO_HELSEOPPLYSNINGER_LEGE_NS = "http://www.kith.no/xmlstds/po/HelseopplysningerTilLege/2012-04-01"
PO_KOMPONENT_NS = "http://www.kith.no/xmlstds/po/poKomponent/2012-04-01"

HER_OID = "2.16.578.1.12.4.1.1.9051"  # identifier type HER-id
ID_TYPE_OID = "2.16.578.1.12.4.1.1.8116"  # FNR, DNR, HNR, HPR, HER, ENH
APPREC_STATUS_OID = "2.16.578.1.12.4.1.1.8258"
APPREC_ERROR_OID = "2.16.578.1.12.4.1.1.8221"
DIALOG_TEMA_OID = "2.16.578.1.12.4.1.1.7322"  # Tema for helsefaglig dialog
# 9152 "Type opplysning ved pasientsamhandling - fra pleie og omsorg": what a question
# (Foresporsel/TypeForesp) from municipal care to a GP is about.
FORESPORSEL_TYPE_OID = "2.16.578.1.12.4.1.1.9152"
FORESPORSEL_TYPES = {
    "1": "Helseopplysninger",
    "4": "Legemiddelopplysninger",
    "6": "Fornye resept(er)",
    "7": "Time til undersøkelse/behandling",
    "8": "Status/plan for utskrivning",
    "99": "Annen henvendelse",
}

DIALOG_HELSEFAGLIG = "DIALOG_HELSEFAGLIG"
HELSEOPPLYSNINGER_LEGE = "HELSEOPPLYSNINGER_LEGE"

Encoding = Literal["UTF-8", "ISO-8859-1"]
MessageKind = Literal["dialogmelding", "plo"]
DialogPart = Literal["foresporsel", "notat"]  # Dialogmelding 1.1: a question or a note


class AppRecStatus(enum.StrEnum):
    """Code system 8258 "Status for mottak av melding"."""

    OK = "1"
    REJECTED = "2"  # Avvist: final
    OK_ERRORS_IN_PART = "3"  # OK, feil i delmelding


APPREC_STATUS_TEXT = {AppRecStatus.OK: "OK", AppRecStatus.REJECTED: "Avvist",
                      AppRecStatus.OK_ERRORS_IN_PART: "OK, feil i delmelding"}

# Code system 8221 "Feil i applikasjonskvittering" (the codes the hub itself sends).
NOT_XML = "T01"
NOT_VALID = "T02"
FORMAT_NOT_SUPPORTED = "T10"
OTHER_FORMAT_ERROR = "T99"
OTHER_ERROR = "X99"


@dataclass(frozen=True, slots=True)
class Party:
    """A sender or receiver: an organisation by HER-id, optionally a unit (service,
    department) inside it and a person (the GP) by HER-id."""

    name: str
    her_id: str
    unit_name: str | None = None
    unit_her_id: str | None = None
    person_name: str | None = None
    person_her_id: str | None = None

    @property
    def addressed_her_id(self) -> str:
        """The most specific HER-id: the person, else the unit, else the organisation."""
        return self.person_her_id or self.unit_her_id or self.her_id


@dataclass(frozen=True, slots=True)
class Patient:
    id: str  # 11 digits: personal data, never logged
    id_type: Literal["FNR", "DNR", "HNR"] = "FNR"
    family_name: str | None = None
    given_name: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationRef:
    ref_to_parent: str
    ref_to_conversation: str


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One GP message: MsgHead v1.2 around a Dialogmelding 1.1 (a Forespørsel, the
    default, or a Notat) or a PLO HELSEOPPLYSNINGER_LEGE. `subject`, `text` and
    `question` are free text (personal data)."""

    kind: MessageKind
    msg_id: str
    conversation: ConversationRef
    generated_at: datetime
    sender: Party
    receiver: Party
    patient: Patient
    subject: str
    text: str
    encoding: Encoding = "UTF-8"
    contact_name: str | None = None  # who at the sender answers questions
    contact_phone: str | None = None
    dialog_part: DialogPart = "foresporsel"
    question: str | None = None  # Forespørsel: what the GP is asked (after the text)
    question_type: str = "99"  # 9152: 99 Annen henvendelse
    dialog_theme: str = "6"  # Notat: 7322 6 Henvendelse om pasient
    dialog_theme_text: str = "Henvendelse om pasient"


@dataclass(frozen=True, slots=True)
class AppRecError:
    code: str  # 8221, e.g. E35
    text: str = ""
    description: str = ""  # the receiver's free text: may hold personal data, never logged


@dataclass(frozen=True, slots=True)
class AppRec:
    """An application receipt (AppRec 1.0 or 1.1) about a message the hub sent."""

    version: str
    id: str
    status: AppRecStatus
    original_msg_id: str
    original_msg_type: str | None
    sender_her_id: str | None
    receiver_her_id: str | None
    errors: tuple[AppRecError, ...] = ()

    def error_codes(self) -> str:
        """The 8221 codes and their code-system names, for operators (no free text)."""
        return ", ".join(f"{e.code} {e.text}".strip() for e in self.errors) or "no error codes"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A MsgHead from a GP: a Dialogmelding answer or another business message."""

    msg_type: str
    msg_id: str
    generated_at: str | None
    conversation: ConversationRef | None
    sender_name: str | None
    sender_her_id: str | None
    receiver_her_id: str | None
    patient_id: str | None
    patient_id_type: str | None
    content_namespace: str | None
    subject: str | None = None
    texts: tuple[str, ...] = field(default=())  # free text: personal data, never logged

    @property
    def is_dialog(self) -> bool:
        return self.content_namespace in (DIALOG_11_NS, DIALOG_10_NS)


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """What an XSD validation checked: namespaces validated, namespaces without a
    schema in the directory, and problems found."""

    validated: tuple[str, ...]
    missing: tuple[str, ...]
    problems: tuple[str, ...]
