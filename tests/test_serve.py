"""``medalign serve``: the API answers as the CLI does, refuses what it must (401, 413, 400 in one line
naming no path), logs no query text, renders in a real browser, and pulls studies from a real
Orthanc on loopback."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from medalign.cli.main import main as cli

TOKEN = "t0ken-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def index(trained_run, prepared_ct, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def service(trained_run, index):
    from medalign.serve.service import Service

    return Service(trained_run, index, "cpu")


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from medalign.serve.app import create_app

    return TestClient(create_app(service, TOKEN, max_upload=8 * 2**20))


def _zip_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.write(f, "export/" + str(f.relative_to(folder)))
    return buf.getvalue()


def _cli_json(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    assert cli(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_zeroshot_and_similar_answer_as_the_cli(client, trained_run, index, phantom_ct, tmp_path, capsys):
    study = sorted((phantom_ct / "images").iterdir())[3]
    expected = _cli_json(["zeroshot", "--checkpoint", str(trained_run), "--study", str(study), "--device", "cpu"], capsys)
    got = client.post("/api/zeroshot", content=_zip_of(study), headers=AUTH)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["probabilities"] == expected["probabilities"] and body["findings"] == expected["findings"]
    assert body["out_of_distribution"] == expected["out_of_distribution"] and body["study"] == "upload"
    similar = client.post("/api/similar?k=3", content=_zip_of(study), headers=AUTH)
    assert cli(["retrieve", "--index", str(index), "--study", str(study), "--k", "4", "--out", str(tmp_path / "r")]) == 0
    retrieved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [h["study_id"] for h in similar.json()["results"]][:3] == [study.name] + [h["study_id"] for h in retrieved][:2]


def test_a_nifti_needs_the_modality_and_then_scores_as_the_cli(client, trained_run, phantom_ct, tmp_path, capsys):
    study = sorted((phantom_ct / "images").iterdir())[5]
    nii = tmp_path / "study.nii.gz"
    assert cli(["convert", str(study), str(nii)]) == 0
    expected = _cli_json(["zeroshot", "--checkpoint", str(trained_run), "--study", str(nii), "--modality", "ct", "--device", "cpu"], capsys)
    refused = client.post("/api/zeroshot", content=nii.read_bytes(), headers=AUTH)
    assert refused.status_code == 400 and "carries no modality" in refused.json()["error"] and "/" not in refused.json()["error"].split(":")[0]
    got = client.post("/api/zeroshot?modality=ct", content=nii.read_bytes(), headers=AUTH)
    assert got.status_code == 200 and got.json()["probabilities"] == expected["probabilities"]


def test_search_returns_reports_and_thumbnails(client, service, prepared_ct):
    import pyarrow.parquet as pq

    got = client.get("/api/search", params={"text": "large right pleural effusion", "k": 4}, headers=AUTH)
    results = got.json()["results"]
    assert got.status_code == 200 and len(results) == 4 and results[0]["score"] >= results[-1]["score"]
    reports = {r["study_id"]: r["report"] for r in pq.read_table(prepared_ct / "manifest.parquet").to_pylist()}
    for hit in results:
        assert set(hit) == {"study_id", "score", "report", "thumbnail_url"} and hit["report"] == reports[hit["study_id"]]
        png = client.get(hit["thumbnail_url"], headers=AUTH)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert client.get("/api/thumbnail/nobody", headers=AUTH).status_code == 404


def test_refusals_are_short_and_name_no_path(client, caplog):
    assert client.get("/healthz").json() == {"status": "ok"} and client.get("/").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = client.get("/api/search", params={"text": "effusion"}, headers=headers)
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
    r = client.post("/api/zeroshot", content=b"\0" * (8 * 2**20 + 1), headers=AUTH)
    assert r.status_code == 413

    def chunks():  # no Content-Length: the limit still holds while reading
        for _ in range(9):
            yield b"\0" * 2**20

    assert client.post("/api/zeroshot", content=chunks(), headers=AUTH).status_code == 413
    bad_zip = io.BytesIO()
    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("../../etc/notes.txt", "not a DICOM file")
    cases = [b"", b"hello" * 100, bad_zip.getvalue(), b"PK\x03\x04broken"]
    for body in cases:
        r = client.post("/api/zeroshot", content=body, headers=AUTH)
        assert r.status_code == 400, (body[:10], r.text)
        message = r.json()["error"]
        assert "\n" not in message and "/tmp" not in message and "Traceback" not in message and "medalign-serve" not in message
    assert client.get("/api/search", params={"text": "x", "k": "lots"}, headers=AUTH).status_code == 400
    assert client.get("/api/search", params={"text": "x", "k": 1000}, headers=AUTH).status_code == 400
    caplog.set_level(logging.INFO, logger="medalign.serve.access")
    client.get("/api/search", params={"text": "secret words of a report"}, headers=AUTH)
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "medalign.serve.access")
    assert "GET /api/search 200" in logged and "secret" not in logged and TOKEN not in logged


def test_the_token_file_must_be_private(trained_run, index, tmp_path, capsys):
    from medalign.serve.app import read_token

    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    assert cli(["serve", "--checkpoint", str(trained_run), "--index", str(index), "--token-file", str(token)]) == 2
    assert "chmod 600" in capsys.readouterr().err
    token.chmod(0o600)
    assert read_token(token) == TOKEN
    token.write_text("short")
    with pytest.raises(Exception, match="at least 16 characters"):
        read_token(token)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_in_thread(app) -> tuple[str, object]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def test_the_page_searches_in_headless_chromium(service, prepared_ct, tmp_path):
    """A real browser: the page takes the token from its link, asks the API, and shows the hits'
    ids and report text as text (a report's markup is not interpreted)."""
    from medalign.serve.app import create_app

    browser = next((p for p in map(shutil.which, ("chromium-headless-shell", "chromium", "google-chrome")) if p), None)
    if browser is None:
        pytest.skip("no headless Chromium on PATH (make test installs chromium-headless-shell with apt-get; needs root)")
    sid = service.index.ids[0]
    original = service.reports.get(sid)
    service.reports[sid] = "<b id='injected'>bold</b> right pleural effusion"  # markup in a report must stay text
    url, server = _serve_in_thread(create_app(service, TOKEN))
    try:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", "--dump-dom",
                              f"{url}/#token={TOKEN}&text=right%20pleural%20effusion"], capture_output=True, text=True, timeout=120)
    finally:
        server.should_exit = True
        service.reports[sid] = original
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "indexed studies" in html and 'class="hit"' in html
    assert html.count('class="hit"') == 5 and "id=\"injected\"" not in html
    hits = [line for line in html.split('class="hit"')[1:]]
    assert all("similarity" in h for h in hits)


def _orthanc() -> str | None:
    return shutil.which("Orthanc")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc on loopback (Debian's package), empty, for this module."""
    binary = _orthanc()
    if binary is None:
        pytest.skip("no Orthanc on PATH (make test installs Debian's orthanc with apt-get; needs root)")
    root = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {"Name": "medalign-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"), "HttpPort": port,
              "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": []}
    (root / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/system", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("Orthanc did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_studies_pulled_from_orthanc_score_as_the_cli(service, trained_run, phantom_ct, orthanc, capsys):
    import httpx
    import pydicom
    from fastapi.testclient import TestClient

    from medalign.serve.app import create_app
    from medalign.serve.pacs import OrthancClient

    study = sorted((phantom_ct / "images").iterdir())[7]
    for f in sorted(p for p in study.rglob("*") if p.is_file()):  # stored as a modality would: one instance at a time
        assert httpx.post(orthanc + "/instances", content=f.read_bytes(), timeout=30).status_code == 200
    uid = str(pydicom.dcmread(next(p for p in study.rglob("*") if p.is_file()), stop_before_pixels=True).StudyInstanceUID)
    expected = _cli_json(["zeroshot", "--checkpoint", str(trained_run), "--study", str(study), "--device", "cpu"], capsys)
    client = TestClient(create_app(service, TOKEN, pacs=OrthancClient(orthanc)))
    got = client.post("/api/zeroshot", params={"study_uid": uid}, headers=AUTH)
    assert got.status_code == 200, got.text
    assert got.json()["probabilities"] == expected["probabilities"] and got.json()["study"] == uid
    similar = client.post("/api/similar", params={"study_uid": uid, "k": 2}, headers=AUTH)
    assert similar.status_code == 200 and similar.json()["results"][0]["study_id"] == study.name
    missing = client.post("/api/zeroshot", params={"study_uid": "1.2.3.4"}, headers=AUTH)
    assert missing.status_code == 400 and missing.json()["error"] == "study_uid: no such study in the PACS"
    assert client.post("/api/zeroshot", params={"study_uid": "../etc"}, headers=AUTH).status_code == 400


def test_a_real_series_the_preset_cannot_take_is_one_line(client, tmp_path):
    """pydicom's real CT series (CT5N, 5 slices of 16 x 16) is fewer slices than the model's preset
    takes: a 400 that says so, naming no path of the upload."""
    from conftest import copy_real_series

    copy_real_series(tmp_path / "series")
    r = client.post("/api/zeroshot", content=_zip_of(tmp_path / "series"), headers=AUTH)
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert "\n" not in message and "/tmp" not in message and "medalign-serve" not in message and str(tmp_path) not in message
    assert "slice" in message, message


def test_a_missing_dataset_is_said_at_start(trained_run, index, tmp_path):
    import json as json_lib

    from medalign.serve.service import Service

    moved = tmp_path / "index"
    shutil.copytree(index, moved)
    info = json_lib.loads((moved / "index.json").read_text())
    (moved / "index.json").write_text(json_lib.dumps({**info, "dataset": str(tmp_path / "gone")}))
    service = Service(trained_run, moved, "cpu")
    assert any("dataset is not there" in n for n in service.notes)
    with pytest.raises(KeyError):
        service.thumbnail(service.index.ids[0])
