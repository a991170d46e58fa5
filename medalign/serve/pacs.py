"""Studies pulled from a PACS by StudyInstanceUID, through Orthanc's REST API (``/tools/find``, then
the study's ZIP archive), into a private temporary folder that is gone when the answer is."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Callable

from medalign.errors import InputError
from medalign.serve.uploads import write_upload

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class OrthancClient:
    """An Orthanc server at ``url`` (``http://127.0.0.1:8042``), with optional HTTP basic credentials."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout: float = 120.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def find_study(self, study_uid: str) -> str:
        """Orthanc's id of the study with ``study_uid``; :class:`InputError` when it is not there."""
        if len(study_uid) > 64 or not UID.match(study_uid):
            raise InputError("study_uid: not a DICOM UID (digits and dots, at most 64)")
        try:
            found = self.client.post("/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
            found.raise_for_status()
        except Exception as e:  # noqa: BLE001 - a PACS that does not answer is said in one line
            raise InputError(f"the PACS did not answer ({e.__class__.__name__})") from None
        ids = found.json()
        if not ids:
            raise InputError("study_uid: no such study in the PACS")
        return ids[0]

    def archive(self, orthanc_id: str) -> bytes:
        """The study's files as Orthanc's ZIP archive."""
        try:
            got = self.client.get(f"/studies/{orthanc_id}/archive")
            got.raise_for_status()
        except Exception as e:  # noqa: BLE001
            raise InputError(f"the PACS did not send the study ({e.__class__.__name__})") from None
        return got.content

    def with_study(self, study_uid: str, work: Callable[[Path, str], dict]) -> dict:
        """``work(folder, study_uid)`` on the study's DICOM files, pulled into a private temporary folder."""
        body = self.archive(self.find_study(study_uid))
        with tempfile.TemporaryDirectory(prefix="medalign-pacs-") as tmp:
            return work(write_upload(body, Path(tmp)), study_uid)
