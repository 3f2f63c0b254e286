"""Readiness means every served model is ready (KServe's own answer stays true after an
unload). Checked on the real app in a child process (KServe's app is a module global)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

CHECK = """
from starlette.testclient import TestClient
from kserve import model_server
from app.serve.server import build_app

server, model, _ = build_app(threads=1)
client = TestClient(model_server.app)
print(client.get("/v2/health/ready").status_code)
model.ready = False
r = client.get("/v2/health/ready")
print(r.status_code, r.json()["error"])
model.ready = True
print(client.get("/v2/health/ready").status_code)
"""


def test_ready_is_false_while_a_served_model_is_not_ready():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()[-3:]
    assert lines[0] == "200"
    assert lines[1].startswith("503") and "ebhi-tumour-resunet" in lines[1]
    assert lines[2] == "200"
