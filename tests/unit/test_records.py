"""The receipt as typed records: round trip, strictness, and its formats (current, previous,
newer). The golden receipts of released code are in test_golden.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bundler.errors import InstallError
from bundler.install.records import (
    RECEIPT_FORMAT,
    ContainerRef,
    CopiedFiles,
    EarlierKibana,
    ElasticRecord,
    EngineSpec,
    ImageRecord,
    KibanaRecord,
    PendingRun,
    Receipt,
    RegistrySpec,
    Release,
    ServedWith,
    ServeRecord,
)
from bundler.install.state import ReceiptFile

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def full_receipt() -> Receipt:
    kibana = KibanaRecord(
        mode="api",
        connector_id="c1",
        name="Tiny",
        api_url="https://h:8443/v1/chat/completions",
        kibana_version="9.2.0",
        created_by_us=True,
        url="http://kibana:5601",
        action="created",
    )
    served = ServeRecord(
        url="https://h:8443/v1/chat/completions",
        ca_cert="/opt/airgap/secrets/tls/ca.crt",
        port=8443,
        model="tiny",
        containers={"vllm": ContainerRef(id="1" * 64, name="airgap-demo-vllm")},
        internal_port=8000,
        artifacts_port=None,
        token_file="/opt/airgap/secrets/bearer-token",
        options=ServedWith(port=8443, server_names=("h",), tls_cert=Path("/etc/c.pem")),
    )
    engine = Release(
        name="demo",
        version=1,
        index_sha256="a" * 64,
        signers=["k" * 64],
        installed_at="2026-01-01T00:00:00Z",
        path="/opt/airgap/releases/demo-1",
        target=EngineSpec(url="unix:///var/run/docker.sock"),
        images=[ImageRecord(role="vllm", ref="x/v:1", id="sha256:1", platform="p", tags=[])],
        serve=served,
        elastic=ElasticRecord(
            earlier=[EarlierKibana(kind="kibana", **kibana.model_dump())],
            kibana=kibana,
            elser_dir=CopiedFiles(path="/es/models", files=["/es/models/e.pt"]),
            settings_file="/opt/airgap/serve/elastic-settings.txt",
        ),
    )
    pushed = ImageRecord(
        role="nginx",
        ref="reg:5000/airgap/demo/nginx:2",
        source_ref="x/n:1",
        id="sha256:2",
        media_type="application/vnd.oci.image.manifest.v1+json",
        platform="p",
        created_by_us=True,
    )
    registry = engine.model_copy(
        update={
            "version": 2,
            "target": RegistrySpec(registry="reg:5000", insecure=True),
            "images": [pushed],
            "serve": None,
        }
    )
    return Receipt(
        current="demo-1",
        releases={"demo-1": engine, "demo-2": registry},
        history=["demo-2", "demo-1"],
        pending=PendingRun(staging="/s", target=EngineSpec(url="unix:///d"), images=[pushed]),
    )


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "receipt.json").write_text(json.dumps(doc))
    return state


def test_round_trip(tmp_path: Path) -> None:
    receipt = full_receipt()
    f = ReceiptFile(tmp_path / "state")
    f.save(receipt)
    again = ReceiptFile.load(tmp_path / "state").receipt
    assert again == receipt
    doc = json.loads(f.path.read_text())
    assert doc["format"] == RECEIPT_FORMAT
    # what the writer did not give stays out; what it gave as null stays null
    pushed = doc["releases"]["demo-2"]["images"][0]
    assert "tags" not in pushed and pushed["source_ref"] == "x/n:1"
    assert "serve" in doc["releases"]["demo-2"] and doc["releases"]["demo-2"]["serve"] is None
    serve = doc["releases"]["demo-1"]["serve"]
    assert serve["artifacts_port"] is None and serve["options"]["tls_cert"] == "/etc/c.pem"
    assert "rotate_token" not in serve["options"]  # an action, never recorded
    assert doc["releases"]["demo-1"]["elastic"]["earlier"][0]["kind"] == "kibana"
    assert "product_docs_dir" not in doc["releases"]["demo-1"]["elastic"]


def test_migrated_options_give_back_what_serve_needs() -> None:
    options = full_receipt().releases["demo-1"].serve.options  # type: ignore[union-attr]
    assert options is not None
    serve, no_gpu = options.split()
    assert serve.server_names == ("h",) and serve.tls_cert == Path("/etc/c.pem")
    assert no_gpu is False and serve.rotate_token is False


@pytest.mark.parametrize(
    "where",
    [
        ("bogus",),
        ("releases", "demo-1", "bogus"),
        ("releases", "demo-1", "images", 0, "bogus"),
        ("releases", "demo-1", "serve", "options", "bogus"),
        ("releases", "demo-1", "elastic", "kibana", "bogus"),
        ("pending", "target", "bogus"),
    ],
)
def test_unknown_keys_are_refused(tmp_path: Path, where: tuple[str | int, ...]) -> None:
    doc = full_receipt().to_json()
    node: Any = doc
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = "?"
    with pytest.raises(InstallError, match="malformed receipt.*bogus") as e:
        ReceiptFile.load(write(tmp_path, doc))
    assert "backup" in e.value.hint


def test_wrong_types_are_refused(tmp_path: Path) -> None:
    doc = full_receipt().to_json()
    doc["releases"]["demo-1"]["version"] = "one"
    with pytest.raises(InstallError, match=r"malformed receipt.*releases\.demo-1\.version"):
        ReceiptFile.load(write(tmp_path, doc))
    doc = full_receipt().to_json()
    doc["releases"]["demo-1"]["target"]["kind"] = "tape"
    with pytest.raises(InstallError, match="malformed receipt"):
        ReceiptFile.load(write(tmp_path, doc))


@pytest.mark.parametrize("needs", [None, "0.9.0"])
def test_a_newer_format_is_refused_by_name(tmp_path: Path, needs: str | None) -> None:
    doc = full_receipt().to_json()
    doc["format"] = "airgap-receipt/13"
    doc["a field of that format"] = 1
    if needs:
        doc["needs"] = needs
    with pytest.raises(InstallError, match="written by a newer airgap") as e:
        ReceiptFile.load(write(tmp_path, doc))
    wanted = "needs airgap >= 0.9.0" if needs else "needs airgap that reads airgap-receipt/13"
    assert wanted in e.value.message
    assert "Install the newer airgap" in e.value.hint


@pytest.mark.parametrize("fmt", [None, "airgap-receipt/0", "airgap-receipt/x", "other/2", 2])
def test_what_is_not_a_receipt_is_refused(tmp_path: Path, fmt: object) -> None:
    doc = full_receipt().to_json()
    if fmt is None:
        del doc["format"]
    else:
        doc["format"] = fmt
    with pytest.raises(InstallError, match="not an airgap receipt"):
        ReceiptFile.load(write(tmp_path, doc))
    with pytest.raises(InstallError, match="not an airgap receipt"):
        ReceiptFile.load(write(tmp_path, [doc]))  # type: ignore[arg-type]


def test_previous_format_is_migrated_once_keeping_every_value(tmp_path: Path) -> None:
    old = json.loads((GOLDEN / "receipt-pending.json").read_text())
    assert old["format"] == "airgap-receipt/1"
    f = ReceiptFile.load(write(tmp_path, old))
    assert f.receipt.format == RECEIPT_FORMAT
    (image,) = f.receipt.pending.images  # type: ignore[union-attr]
    assert image.tags is None  # written before tags were recorded: means the source ref
    assert json.loads(f.path.read_text())["format"] == "airgap-receipt/1"  # reading writes nothing
    f.save()
    new = json.loads(f.path.read_text())
    assert new == {**old, "format": RECEIPT_FORMAT}
    assert ReceiptFile.load(f.path.parent).receipt == f.receipt


def test_mutation_makes_new_records() -> None:
    receipt = Receipt()
    assert receipt.to_json() == {
        "format": RECEIPT_FORMAT,
        "current": None,
        "releases": {},
        "history": [],
        "pending": None,
    }
    r2 = receipt.with_release("demo-1", full_receipt().releases["demo-1"]).activated("demo-1")
    assert receipt.releases == {} and receipt.current is None
    assert r2.current == "demo-1" and r2.history == ["demo-1"]
    with pytest.raises(ValueError):
        r2.current = "x"  # type: ignore[misc]
