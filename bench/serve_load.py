"""``medalign serve`` under load, on loopback: 1, 8 and 32 concurrent clients for text search and for
zero-shot on an uploaded study, against an index of 10^5 studies (the demo model's real embeddings,
repeated with noise to that size: the search cost is real, HNSW as ``index`` builds it from 10^5).

For each endpoint and concurrency: requests, errors (must be 0), throughput, p50 / p99 latency; and
the server's resident memory after a warm-up and after each of two rounds of the same load (a leak
keeps growing from round to round; the allocator's high-water mark after the first does not). The server
is a separate process (``medalign serve``, uvicorn); clients are threads with their own connections.
The baseline is the same request sequentially from one client: what concurrency buys.

    .venv/bin/python bench/serve_load.py [--studies 100000 --search-requests 320 --zeroshot-requests 64]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "medalign.cli.main", *argv], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def build(work: Path, studies: int) -> tuple[Path, Path, Path]:
    """A tiny demo model trained on phantoms, its real index grown to ``studies`` rows, a study zip."""
    from medalign.tasks.retrieval import StudyIndex, build_index

    cli("synth", "--out", str(work / "raw"), "--studies", "24", "--seed", "7")
    cli("prep", "--images", str(work / "raw" / "images"), "--reports", str(work / "raw" / "reports.csv"), "--out", str(work / "ds"),
        "--config", "demo_ct")
    cli("pretrain", "--data", str(work / "ds"), "--out", str(work / "run"), "--config", "demo_ct", "--max-steps", "8", "data.batch_size=8",
        "model.image.options.widen_factor=0.25", "optim.warmup_steps=2")
    cli("index", "--checkpoint", str(work / "run"), "--data", str(work / "ds"), "--out", str(work / "small"))
    small = StudyIndex(work / "small")
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(small.ids), studies)

    def grown(emb: np.ndarray) -> np.ndarray:
        x = emb[rows] + rng.normal(0, 0.05, (studies, emb.shape[1])).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    meta = [{**small.meta[r], "study_id": f"{small.meta[r]['study_id']}-{i}"} for i, r in enumerate(rows)]
    build_index(work / "index", Path(small.info["model"]), Path(small.info["dataset"]), grown(small.studies), grown(small.reports), meta)
    study = sorted((work / "raw" / "images").iterdir())[0]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(p for p in study.rglob("*") if p.is_file()):
            z.write(f, f.relative_to(study))
    (work / "study.zip").write_bytes(buf.getvalue())
    return work / "run", work / "index", work / "study.zip"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, token: str, kind: str, clients: int, total: int, body: bytes) -> dict:
    """``total`` requests of ``kind`` spread over ``clients`` threads; latencies and errors."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    per = [total // clients + (i < total % clients) for i in range(clients)]
    texts = ["right pleural effusion", "cardiomegaly", "no acute findings", "lung nodule in the left upper lobe"]

    def client(n: int, seed: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as c:
            for i in range(n):
                t = time.perf_counter()
                try:
                    if kind == "search":
                        r = c.get("/api/search", params={"text": texts[(seed + i) % len(texts)], "k": 5})
                    else:
                        r = c.post("/api/zeroshot", content=body, headers={"Content-Type": "application/octet-stream"})
                    ok = r.status_code == 200
                    detail = f"{r.status_code}"
                except Exception as e:  # noqa: BLE001 - counted, reported
                    ok, detail = False, e.__class__.__name__
                with lock:
                    (latencies.append(time.perf_counter() - t) if ok else errors.append(detail))

    threads = [threading.Thread(target=client, args=(n, i)) for i, n in enumerate(per)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"kind": kind, "clients": clients, "requests": total, "errors": len(errors), "throughput": total / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None, "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}


def batching(run: Path, study: Path) -> None:
    """Would batching concurrent zero-shot requests help? The image tower on B studies at once against
    B calls of one study each (the same prepared volume), in this process, on this machine's CPU."""
    import torch

    from medalign.serve.uploads import write_upload
    from medalign.tasks.model_io import load_model
    from medalign.tasks.raw_study import load_raw_study

    model, model_dir = load_model(run, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        raw = load_raw_study(write_upload(study.read_bytes(), Path(tmp)), model_dir)
    x = torch.from_numpy(raw.arrays[0])[None, None]
    with torch.no_grad():
        model.encode_image(x)  # first-call costs
        for b in (4, 8, 16):
            t = time.perf_counter()
            for _ in range(b):
                model.encode_image(x)
            one_by_one = time.perf_counter() - t
            t = time.perf_counter()
            model.encode_image(x.expand(b, *x.shape[1:]).contiguous())
            batched = time.perf_counter() - t
            print(f"image tower, {b} studies: one at a time {one_by_one * 1000:.0f} ms, one batch {batched * 1000:.0f} ms "
                  f"({one_by_one / batched:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--search-requests", type=int, default=320)
    ap.add_argument("--zeroshot-requests", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medalign_bench_serve_"))
    server = None
    try:
        run, index, study = build(work, args.studies)
        batching(run, study)
        token = secrets.token_urlsafe(24)
        (work / "token").write_text(token)
        (work / "token").chmod(0o600)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "medalign.cli.main", "serve", "--checkpoint", str(run), "--index", str(index),
                                   "--token-file", str(work / "token"), "--port", str(port), "--device", "cpu"],
                                  stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"), env={**os.environ, "PYTHONPATH": str(ROOT)})
        import httpx

        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = study.read_bytes()
        load(url, token, "search", 4, 40, body)  # warm-up: HNSW graph loaded, first calls paid
        load(url, token, "zeroshot", 2, 4, body)
        before = rss_mib(server.pid)
        rounds = []
        for _ in range(2):  # the same load twice: a leak keeps growing, an allocator's high-water mark does not
            results = []
            for kind, total in (("search", args.search_requests), ("zeroshot", args.zeroshot_requests)):
                for clients in (1, 8, 32):
                    results.append(load(url, token, kind, clients, max(total, clients), body))
            rounds.append(rss_mib(server.pid))
        print(f"medalign serve on loopback, index of {args.studies} studies (HNSW), CPU, {os.cpu_count()} cores; one uvicorn process")
        print("| endpoint | clients | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['kind']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
        for kind in ("search", "zeroshot"):
            one, many = [r for r in results if r["kind"] == kind and r["clients"] in (1, 32)]
            print(f"{kind}: 32 clients vs 1 client sequentially (baseline): throughput ratio {many['throughput'] / one['throughput']:.2f}x")
        print(f"server resident memory: {before:.0f} MiB after warm-up, {rounds[0]:.0f} MiB after round 1, {rounds[1]:.0f} MiB after "
              f"round 2 of the same load ({rounds[1] - rounds[0]:+.0f} MiB between the rounds; the table is round 2)")
        print(json.dumps({"results": results, "rss_before_mib": before, "rss_rounds_mib": rounds, "errors_total": sum(r["errors"] for r in results)}))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
