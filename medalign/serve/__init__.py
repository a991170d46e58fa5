"""``medalign serve``: a trained model and its index behind a small authenticated web service and page
(FastAPI + uvicorn), optionally fed from a PACS (Orthanc's REST API). See ``docs/serve.md``."""
