"""`make lab` (divscale notebook lab): JupyterLab from this environment, on loopback only, opens the py:percent
sources as notebooks (jupytext's contents manager) and runs their cells in the project kernel.

The test starts the server exactly as `make lab` does (``lab_argv``), on a free 127.0.0.1 port with a token and
no browser, talks to it only through its REST API and a kernel's websocket channel, and shuts it down."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from divscale import paths
from divscale.study import notebook_runner as notebooks

pytestmark = [pytest.mark.notebooks, pytest.mark.timeout(240)]

NOTEBOOK = "notebooks/01_data_construction.py"
START_S, CELL_S = 150, 60                    # bounds: server up (2 busy cores), one cell's reply


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, port: int, token: str):
        self.base, self.token = f"http://127.0.0.1:{port}", token

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)

    def execute(self, kernel_id: str, code: str, timeout: float = CELL_S) -> tuple[dict, str]:
        """Run ``code`` over the kernel's websocket channel: (execute_reply content, stdout text)."""
        import websocket

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.base.rsplit(':', 1)[1]}/api/kernels/{kernel_id}/"
                                         f"channels?token={self.token}", timeout=timeout)
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"channel": "shell", "buffers": [], "metadata": {}, "parent_header": {},
                            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": uuid.uuid4().hex,
                                       "username": "test", "version": "5.3"},
                            "content": {"code": code, "silent": False, "store_history": True,
                                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        reply, out, idle, deadline = None, [], False, time.monotonic() + timeout
        try:
            while (reply is None or not idle) and time.monotonic() < deadline:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "execute_reply":
                    reply = msg["content"]
                elif kind == "stream":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    out.append("\n".join(msg["content"]["traceback"]))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
        finally:
            ws.close()
        assert reply is not None and idle, f"no reply to the cell within {timeout} s; output so far: {out}"
        return reply, "".join(out)


@pytest.fixture
def lab(tmp_path):
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "OMP_NUM_THREADS": "1"}
    argv = notebooks.lab_argv(port=port, token=token, browser=False, port_retries=0)
    log_path = tmp_path / "lab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        client = Lab(port, token)
        try:
            deadline = time.monotonic() + START_S
            while True:
                assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log_path.read_text()}"
                with contextlib.suppress(OSError):
                    if client.request("GET", "/api/status", timeout=5)[0] == 200:
                        break
                assert time.monotonic() < deadline, f"no server after {START_S} s:\n{log_path.read_text()}"
                time.sleep(0.5)
            yield client
            client.request("POST", "/api/shutdown")
            proc.wait(timeout=30)
            assert proc.returncode == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_lab_argv_is_loopback_and_this_environment():
    argv = notebooks.lab_argv()
    assert argv[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in argv and f"--ServerApp.root_dir={paths.ROOT}" in argv
    assert not any(a.startswith("--IdentityProvider.token") for a in argv)      # the server draws one


def test_lab_opens_the_py_source_as_a_notebook_and_runs_a_cell(lab):
    status, model = lab.request("GET", f"/api/contents/{NOTEBOOK}?type=notebook&content=1")
    assert status == 200 and model["type"] == "notebook" and model["format"] == "json"
    nb = model["content"]
    assert nb["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"          # paired, as jupytext.toml says
    cells = nb["cells"]
    assert [c["cell_type"] for c in cells][:1] == ["markdown"] and len(cells) > 5
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1

    with pytest.raises(urllib.error.HTTPError):                                  # the token is required
        urllib.request.urlopen(lab.base + "/api/kernels", timeout=10)
    status, kernel = lab.request("POST", "/api/kernels", {"name": "python3"})
    assert status == 201 and kernel["name"] == "python3"
    probe = ("import sys, divscale\n"
             "print(sys.executable)\nprint(divscale.__file__)\nprint(repr(recipe))\n")
    reply, out = lab.execute(kernel["id"], "".join(params[0]["source"]) + "\n" + probe)
    assert reply["status"] == "ok", out
    executable, package, recipe = out.strip().splitlines()[-3:]
    assert os.path.realpath(executable) == os.path.realpath(sys.executable)      # the project's .venv kernel
    assert package.startswith(str(paths.ROOT / "divscale"))
    assert recipe == "'cpu'"
    reply, out = lab.execute(kernel["id"], "1/0")                                  # errors come back as errors
    assert reply["status"] == "error" and "ZeroDivisionError" in out
    assert lab.request("DELETE", f"/api/kernels/{kernel['id']}")[0] == 204
