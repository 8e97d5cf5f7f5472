"""datasets/ali-ccp/run.sh: its three modes, and the offline failure path.

ALICCP_DIR points the script at a temporary folder (never the repo); ALICCP_BASE_URL points the
download at a closed local port, a local port that never completes a connection, or a local HTTP
server, so no test touches the internet.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_group

from paddle_rec_zoo.data.ali_ccp import RAW_FILES

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = ROOT / "datasets" / "ali-ccp" / "run.sh"
SYNTHETIC = ROOT / "datasets" / "ali-ccp" / "synthetic.py"
CLOSED_PORT_URL = "http://127.0.0.1:9/esmm"  # discard port: connection refused at once

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def run_sh(*args, data_dir: Path, base_url=CLOSED_PORT_URL, timeout=60, connect_timeout=3):
    env = dict(
        os.environ, ALICCP_DIR=str(data_dir), ALICCP_BASE_URL=base_url, PYTHON=sys.executable
    )
    env["ALICCP_CONNECT_TIMEOUT"] = str(connect_timeout)
    return run_group(["sh", str(RUN_SH), *args], timeout=timeout, env=env)


def tiny_raw(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    it = "{}\x02{}\x031.0".format
    (d / "common_features_train.csv").write_text(f"aa,2,{it(101, 1)}\x01{it(124, 2)}\n")
    (d / "common_features_test.csv").write_text(f"bb,1,{it(101, 1)}\n")
    (d / "sample_skeleton_train.csv").write_text(
        f"1,1,0,aa,1,{it(205, 7)}\n2,0,0,aa,1,{it(205, 8)}\n3,0,1,aa,1,{it(205, 8)}\n"
    )
    (d / "sample_skeleton_test.csv").write_text(f"9,0,0,bb,1,{it(205, 8)}\n")
    return d


def test_offline_without_raw_files_fails_fast_and_writes_nothing(tmp_path):
    t0 = time.time()
    proc = run_sh(data_dir=tmp_path)
    took = time.time() - t0
    assert proc.returncode == 1
    assert took < 10
    err = proc.stderr
    assert "traindata_10w.csv" in err  # what it tried
    assert "https://tianchi.aliyun.com/dataset/408" in err and "login" in err  # how to go on
    assert f"{tmp_path}/raw/" in err
    assert "--synthetic" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no train_data/, test_data/ or temp files


@pytest.fixture
def silent_port():
    """A local port whose connections never complete: its listen queue (backlog 0) is filled by
    connections nobody accepts, so Linux drops every further SYN and a client's connect waits
    until its own timeout, as with an unreachable host (no network needed)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)  # the handshakes complete: the queue is full
    yield port
    for sock in (*fillers, server):
        sock.close()


def test_a_silent_host_is_given_up_after_the_connect_timeout(tmp_path, silent_port):
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(TimeoutError):  # the fixture works: connecting really hangs
        probe.connect(("127.0.0.1", silent_port))
    probe.close()
    base_url = f"http://127.0.0.1:{silent_port}/esmm"
    t0 = time.time()
    proc = run_sh(data_dir=tmp_path, base_url=base_url, connect_timeout=2)
    took = time.time() - t0
    assert proc.returncode == 1
    # It waited for the connection (a refused one fails at once) and no longer than the setting
    # (the system's own connect timeout is minutes).
    assert 2 <= took < 8
    err = proc.stderr
    assert "run.sh: no Ali-CCP data prepared." in err
    assert f"{base_url}/traindata_10w.csv: " in err
    if shutil.which("curl"):  # the fetcher run.sh prefers; exit code 28: timed out
        assert "curl: (28)" in err
    assert list(tmp_path.iterdir()) == []


def test_run_sh_looks_for_the_raw_files_the_converter_reads():
    line = next(x for x in RUN_SH.read_text().splitlines() if x.startswith("RAW_FILES="))
    assert sorted(line.split("=", 1)[1].strip('"').split()) == sorted(RAW_FILES)


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_is_renamed_into_place(tmp_path, http_dir):
    served, url = http_dir
    (served / "traindata_10w.csv").write_text("1,1,0,101:3\n")
    (served / "testdata_10w.csv").write_text("2,0,0,101:4\n")
    data = tmp_path / "data"
    proc = run_sh(data_dir=data, base_url=url)
    assert proc.returncode == 0, proc.stderr
    assert (data / "train_data" / "traindata_10w.csv").read_text() == "1,1,0,101:3\n"
    assert (data / "test_data" / "testdata_10w.csv").read_text() == "2,0,0,101:4\n"
    assert sorted(p.name for p in data.iterdir()) == ["test_data", "train_data"]
    # A second run refuses to replace the data; --force replaces it.
    proc = run_sh(data_dir=data, base_url=url)
    assert proc.returncode == 2 and "use --force" in proc.stderr
    (served / "testdata_10w.csv").write_text("3,0,0,101:5\n")
    assert run_sh("--force", data_dir=data, base_url=url).returncode == 0
    assert (data / "test_data" / "testdata_10w.csv").read_text() == "3,0,0,101:5\n"


def test_half_failed_download_leaves_nothing(tmp_path, http_dir):
    served, url = http_dir
    (served / "traindata_10w.csv").write_text("1,1,0,101:3\n")  # the test file is missing: 404
    data = tmp_path / "data"
    proc = run_sh(data_dir=data, base_url=url)
    assert proc.returncode == 1
    assert "testdata_10w.csv" in proc.stderr
    assert list(data.iterdir()) == []


def test_no_arguments_converts_raw_folder(tmp_path):
    tiny_raw(tmp_path / "raw")
    proc = run_sh("--format", "slot", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["rows"] == {"train": 2, "test": 1}
    assert meta["dropped_noise"]["train"] == 1
    assert (tmp_path / "train_data" / "part-00000.txt").read_text() == (
        "1,1,0,205:3,101:1,124:2\n2,0,0,205:4,101:1,124:2\n"
    )


def test_partial_raw_folder_is_an_error(tmp_path):
    tiny_raw(tmp_path / "raw")
    (tmp_path / "raw" / "common_features_test.csv").unlink()
    proc = run_sh(data_dir=tmp_path)
    assert proc.returncode == 2
    assert "lacks common_features_test.csv" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_raw_mode_passes_options_through(tmp_path):
    raw = tiny_raw(tmp_path / "in")
    out = tmp_path / "out"
    proc = run_sh("--raw", str(raw), "--out", str(out), "--min-count", "2", data_dir=tmp_path / "x")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["min_count"] == 2
    assert meta["format"] == "binary"  # the default: the data set the trainers read
    assert (out / "train_data" / "dataset.json").is_file()
    assert meta["vocab_size"]["total"] == 2  # 101:1, 124:2; 205:8's second row is noise
    assert not (tmp_path / "x").exists()
    # The converter's own errors come through unchanged.
    proc = run_sh("--raw", str(raw), "--out", str(out), data_dir=tmp_path / "x")
    assert proc.returncode == 2 and "use --force" in proc.stderr
    # Day by day: the next conversion keeps this one's vocabulary.
    proc = run_sh("--raw", str(raw), "--out", str(tmp_path / "out2"), "--vocab", str(out), "--min-count", "2",
                  data_dir=tmp_path / "x")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "out2" / "meta.json").read_text())
    assert meta["vocab"]["kept"] == 2 and meta["vocab"]["new"] == 0


def test_help(tmp_path):
    proc = run_sh("--help", data_dir=tmp_path)
    assert proc.returncode == 0
    assert "--synthetic N" in proc.stdout and "--raw DIR" in proc.stdout


@pytest.mark.skipif(not SYNTHETIC.exists(), reason="synthetic generator not there yet")
def test_synthetic_mode_delegates(tmp_path):
    out = tmp_path / "syn"
    proc = run_sh("--synthetic", "120", "--out", str(out), "--seed", "3", data_dir=tmp_path / "x")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["n_train"] == 120
    assert (out / "train_data").is_dir() and (out / "test_data").is_dir()
    raw = tmp_path / "synraw"
    proc = run_sh(
        "--synthetic", "50", "--out", str(raw), "--format", "raw", data_dir=tmp_path / "x"
    )
    assert proc.returncode == 0, proc.stderr
    assert (raw / "sample_skeleton_train.csv").exists()
