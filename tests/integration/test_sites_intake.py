"""Sites at intake, through radbridge's own DICOM and HL7 listeners in this process (one
SQLite store): each site's patient IDs carry its issuer, so two sites' patient "12345" are
two patients whose orders, studies and ADT updates never touch each other; and an HL7
message from a facility of no site is refused when ``hl7.unknown_facility: refuse``.

The modalities are dcmtk ``storescu`` (both from loopback, told apart by calling AE
title), the RISes the harness's MLLP client; the files name no IssuerOfPatientID and the
messages no PID-3.4, as township systems often send them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from adapters.harness.hl7_messages import adt, orm_o01, sample_order
from adapters.harness.ris import send_message
from adapters.hl7.ack import AckCode
from adapters.hl7.edge import Hl7Edge
from broker.model.domain import LinkState, Patient
from broker.runtime.edges import ServiceContext
from broker.store import StudyStore, make_engine
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from broker.store.spool import Spool
from config.schema import Settings
from tests.listener import dicom_listener
from tests.peers import LOOPBACK, free_port, storescu

pytestmark = pytest.mark.xdist_group("sites_intake")

SITES = {
    "township-a": {
        "name": "Township A",
        "senders": [{"ae_title": "TWA_CT", "host": "127.0.0.0/8"}],
        "hl7_facility": "TWA",
        "issuer": "TWA_PID",
    },
    "township-b": {
        "name": "Township B",
        "senders": [{"ae_title": "TWB_CT", "host": "127.0.0.1"}],
        "hl7_facility": "TWB",
        "issuer": "TWB_PID",
    },
}


@dataclass
class Intake:
    dicom_port: int
    hl7_port: int
    studies: StudyStore
    orders: OrderStore
    folder: Path

    def hl7(self, message: str) -> tuple[AckCode, str]:
        ack = send_message(LOOPBACK, self.hl7_port, message)
        return ack.code, ack.text

    def send_study(self, site_ae: str, accession: str, patient_id: str) -> str:
        """The site's modality sends a 1-instance CT naming no issuer; its study UID."""
        [path] = generate_study(
            "ct_chest",
            self.folder / f"{site_ae}-{accession}",
            instances=1,
            rows=16,
            columns=16,
            patient_id=patient_id,
            patient_name="ZHANG^SAN",
            accession=accession,
        )
        ds = pydicom.dcmread(path)
        del ds.IssuerOfPatientID
        ds.save_as(path)
        storescu([path], self.dicom_port, calling_ae=site_ae, called_ae="RADBRIDGE")
        return str(ds.StudyInstanceUID)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    """Sites A and B (issuers TWA_PID, TWB_PID); the hub's RIS sends as HUBRIS; any other
    MSH-4 is refused. The DICOM and HL7 listeners index into one migrated SQLite store."""
    folder = tmp_path_factory.mktemp("intake")
    sock = socket.create_server((LOOPBACK, 0))
    hl7_port = free_port()
    settings = Settings.model_validate(
        {
            "storage": {"spool": str(folder / "spool"), "database": f"sqlite:///{folder}/rb.db"},
            "dicom": {
                "listen": {"host": LOOPBACK, "port": sock.getsockname()[1]},
                "ae_titles": {"RADBRIDGE": "ingest"},
            },
            "hl7": {
                "listen": {"host": LOOPBACK, "port": hl7_port},
                "unknown_facility": "refuse",
                "hub_facilities": ["HUBRIS"],
            },
            "sites": SITES,
        }
    )
    engine = make_engine(settings.database_url())
    migrate(engine)
    studies = StudyStore(engine)
    context = ServiceContext(settings, engine, studies, Spool(folder / "spool"))
    edge = Hl7Edge()
    edge.start(context)
    try:
        with dicom_listener(settings, studies, sock):
            yield Intake(sock.getsockname()[1], hl7_port, studies, OrderStore(engine), folder)
    finally:
        edge.stop()


def test_two_sites_same_patient_id_never_share_orders_studies_or_updates(intake: Intake) -> None:
    """Sites A and B each order and send a CT for their patient "12345" with the same
    placer, filler and accession numbers: each order and study carries its site's issuer,
    each study is linked to its own site's order, and site A's ADT^A08 renames only site A's
    patient."""
    patient = Patient("12345", None, "ZHANG^SAN", "19700101", "M")
    uids = {}
    for facility in ("TWA", "TWB"):
        order = sample_order(77, accession_number="ACC777", patient=patient, study_uid=None)
        assert intake.hl7(orm_o01(order, facility=facility))[0] is AckCode.AA
        uids[facility] = intake.send_study(f"{facility}_CT", "ACC777", "12345")
    assert uids["TWA"] != uids["TWB"]
    intake.studies.close_stable(datetime.now(UTC) + timedelta(hours=1))
    for facility, site, issuer in (
        ("TWA", "township-a", "TWA_PID"),
        ("TWB", "township-b", "TWB_PID"),
    ):
        study = intake.studies.get_study(uids[facility])
        assert (study.site, study.patient.patient_id, study.patient.issuer) == (
            site,
            "12345",
            issuer,
        )
        stored, link = intake.orders.order_for_study(study)
        assert stored is not None and link is not None
        assert link.state is LinkState.LINKED
        assert (stored.order.site, stored.order.patient.issuer) == (site, issuer)

    renamed = Patient("12345", None, "LI^SI", "19700101", "M")
    assert intake.hl7(adt("A08", renamed, facility="TWA"))[0] is AckCode.AA
    a, b = (intake.studies.get_study(uids[f]) for f in ("TWA", "TWB"))
    assert (a.patient.name, b.patient.name) == ("LI^SI", "ZHANG^SAN")
    [order_b] = [
        o for o in intake.orders.find(accession_number="ACC777") if o.order.site == "township-b"
    ]
    assert order_b.order.patient.name == "ZHANG^SAN"


def test_a_message_from_a_facility_of_no_site_is_refused_with_ar(intake: Intake) -> None:
    """An ORM^O01 whose MSH-4 is no site's and not the hub's own gets AR with an ERR naming
    MSH-4 and the facility, and no order is made; the hub's own RIS (HUBRIS) is taken as a
    hub order."""
    order = sample_order(78, accession_number="ACC778", study_uid=None)
    code, text = intake.hl7(orm_o01(order, facility="TWX"))
    assert code is AckCode.AR
    assert "MSH-4" in text and "'TWX'" in text, text
    assert intake.orders.find(accession_number="ACC778") == []
    hub_order = sample_order(79, accession_number="ACC779", study_uid=None)
    assert intake.hl7(orm_o01(hub_order, facility="HUBRIS"))[0] is AckCode.AA
    [stored] = intake.orders.find(accession_number="ACC779")
    assert stored.order.site is None
