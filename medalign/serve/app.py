"""The HTTP face of :class:`~medalign.serve.service.Service` (FastAPI).

Every ``/api/`` call needs ``Authorization: Bearer <token>`` (401 otherwise, nothing more said);
``/healthz`` and the page (``/``, no data in it) do not. A study is sent as the request body (a NIfTI
file or a zip of one DICOM series) of at most ``max_upload`` bytes (413 beyond). A bad file is a 400
with one line naming no path; the access log holds method, path, status and time only (no query
string, no body, no report text).
"""

# no "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request) at run time
import hmac
import logging
import time
from pathlib import Path

from medalign.errors import InputError
from medalign.serve.page import PAGE

access_log = logging.getLogger("medalign.serve.access")
#: the most results one query may ask for
MAX_K = 100


class TooLarge(Exception):
    """A request body over the upload limit."""


def create_app(service, token: str, max_upload: int = 512 * 2**20, pacs=None):
    """The FastAPI application over a loaded ``service``; ``pacs``: a
    :class:`~medalign.serve.pacs.OrthancClient` for ``?study_uid=`` queries, or None."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="medalign", docs_url=None, redoc_url=None, openapi_url=None)  # no schema pages: nothing unauthenticated but the page
    expected = f"Bearer {token}".encode("utf-8")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        path = request.url.path
        if path.startswith("/api/"):
            given = request.headers.get("authorization", "").encode("utf-8")
            if not hmac.compare_digest(given, expected):
                response = JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                _log(request.method, path, 401, started)
                return response
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_upload:
                _log(request.method, path, 413, started)
                return error(413, f"upload over the limit of {max_upload // 2**20} MiB")
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            logging.getLogger("medalign.serve").exception("internal error on %s %s", request.method, path)
            response = error(500, "internal error")
        _log(request.method, path, response.status_code, started)
        return response

    async def body_of(request: Request) -> bytes:
        """The request body, refused past ``max_upload`` bytes even without a Content-Length."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload:
                raise TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _k(value: str | None) -> int:
        try:
            k = int(value) if value is not None else 5
        except ValueError:
            raise InputError(f"k: '{value}' is not a whole number") from None
        if not 1 <= k <= MAX_K:
            raise InputError(f"k: must be between 1 and {MAX_K}")
        return k

    def answer(work):
        try:
            return JSONResponse(work())
        except InputError as e:
            return error(400, str(e).splitlines()[0])
        except TooLarge:
            return error(413, f"upload over the limit of {max_upload // 2**20} MiB")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE)

    @app.get("/api/info")
    def info():
        return {**service.info(), "pacs": pacs is not None}

    @app.get("/api/search")
    def search(text: str = "", k: str | None = None):
        return answer(lambda: {"results": service.search(text, _k(k))})

    async def study_call(request: Request, with_body, with_pacs):
        params = request.query_params
        uid = params.get("study_uid")
        if uid is not None:
            if pacs is None:
                return error(400, "study_uid: this service has no PACS (start it with --pacs URL)")
            return await run_in_threadpool(answer, lambda: pacs.with_study(uid, with_pacs))
        try:
            body = await body_of(request)
        except TooLarge:
            return error(413, f"upload over the limit of {max_upload // 2**20} MiB")
        return await run_in_threadpool(answer, lambda: with_body(body, params.get("modality")))  # the event loop stays free

    @app.post("/api/zeroshot")
    async def zeroshot(request: Request):
        return await study_call(request, lambda body, modality: service.zeroshot(body, modality),
                                lambda folder, uid: service.zeroshot_folder(folder, uid))

    @app.post("/api/similar")
    async def similar(request: Request):
        k_text = request.query_params.get("k")
        return await study_call(request, lambda body, modality: {"results": service.similar(body, _k(k_text), modality)},
                                lambda folder, uid: {"results": service.similar_folder(folder, _k(k_text))})

    @app.get("/api/thumbnail/{study_id}")
    def thumbnail(study_id: str):
        try:
            return Response(service.thumbnail(study_id), media_type="image/png")
        except KeyError:
            return error(404, "no such study in the index, or its volume is not in the index's dataset")

    return app


def _log(method: str, path: str, status: int, started: float) -> None:
    access_log.info("%s %s %d %.1f ms", method, path, status, 1000 * (time.perf_counter() - started))


def read_token(path: Path) -> str:
    """The bearer token in ``path``; refused when group or others may read or write the file, or
    when it is shorter than 16 characters."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the token file ({e.__class__.__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{path}: the token file may be read by others (mode {stat.S_IMODE(mode):o}); chmod 600 {path}")
    if len(token) < 16 or any(c.isspace() for c in token):
        raise InputError(f"{path}: the token must be one word of at least 16 characters")
    return token
