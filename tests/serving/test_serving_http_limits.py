"""Hostile and malformed requests against the real inference process over loopback sockets:
header floods (431, others still served), stalled and idle connections (408 / closed), .npy
headers over numpy's limit, shapes numpy cannot hold, 5,000-digit versions and error bodies
that would repeat megabytes of input. Every refusal is a 4xx with a JSON body; the process keeps
serving."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from kit.serving import MLP, auth, log_model, rows

from kernel_magics.config import Settings, load_settings
from kernel_magics.targets.local import LocalTarget

HUGE = "9" * 5000


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Iterator[Settings]:
    """Short timeouts so that the tests see them act (the defaults are 10 s and 60 s), set as a
    user would: through the environment the inference process inherits."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERNEL_MAGICS_HEADER_TIMEOUT_S", "1")
        mp.setenv("KERNEL_MAGICS_IDLE_TIMEOUT_S", "1")
        yield load_settings()


@pytest.fixture(scope="module")
def port(client: LocalTarget, settings: Settings) -> int:
    log_model(settings, "guard", MLP(seed=3), rows(4))
    client.deploy("guard")
    return int(client.url.rsplit(":", 1)[1])


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (with a content-length, as the process always sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (recv answers nothing); False on a timeout."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def predict_ok(client: LocalTarget) -> bool:
    url = f"{client.url}/v1/models/guard:predict"
    r = requests.post(url, json={"instances": rows(2).tolist()}, headers=auth(client), timeout=60)
    return r.status_code == 200 and len(r.json()["predictions"]) == 2


# -- 1. request heads ---------------------------------------------------------------------------
def test_a_header_flood_is_refused_with_431_while_others_are_served(port, client):
    flood = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-A: aaaa\r\n" * 200_000 + b"\r\n"  # 2.2 MB
    served: list[bool] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the server stops reading once it has answered
                sock.sendall(flood)
            served.append(predict_ok(client))  # another client, once the flood was refused

        sender = threading.Thread(target=send)
        sender.start()
        status, headers, body = read_response(sock)
        sender.join(60)
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert "request head over the limit of 65536 bytes" in json.loads(body)["error"]
    assert served == [True]


def test_many_header_fields_and_a_huge_header_are_431_and_repeats_still_work(port, client):
    many = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-B: 1\r\n" * 101 + b"\r\n"
    one_huge = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-C: " + b"c" * 200_000 + b"\r\n\r\n"
    for request in (many, one_huge):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            status, _, body = read_response(sock)
        assert status == 431, body
    # a few repeated fields are fine (joined as RFC 9110 says) and the others read as usual
    body = json.dumps({"instances": rows(1).tolist()}).encode()
    token = auth(client)["Authorization"].encode()
    request = (
        b"POST /v1/models/guard:predict HTTP/1.1\r\nHost: x\r\nX-Trace: a\r\n"
        b"Authorization: " + token + b"\r\nX-Trace: b\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        status, _, answer = read_response(sock)
    assert status == 200
    assert len(json.loads(answer)["predictions"]) == 1


# -- 2. stalled and idle connections ------------------------------------------------------------
def test_a_stalled_request_head_gets_408_and_is_closed(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        status, headers, body = read_response(sock)
        assert status == 408
        assert "not received in time" in json.loads(body)["error"]
        assert headers["connection"] == "close"
        assert closed_by_server(sock)


def test_idle_connections_are_closed_and_the_kernel_client_reconnects(port, client):
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)  # sends nothing at all
    kept = socket.create_connection(("127.0.0.1", port), timeout=30)
    with silent, kept:
        kept.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(kept)
        assert (status, body) == (200, b"pong")
        assert headers["connection"] == "keep-alive"
        assert client.predict("guard", rows(3))[0].shape == (3, 10)  # its connection, kept alive
        assert closed_by_server(silent)
        assert closed_by_server(kept)  # idle after its answer
    # the kernel side's kept connection was closed too: its next call reconnects on its own
    assert client.predict("guard", rows(2))[0].shape == (2, 10)


# -- 3 and 4. .npy headers and tensor shapes ----------------------------------------------------
def npy_with_header(text: str, data: bytes = b"") -> bytes:
    text = text + " " * ((64 - (12 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text.encode("latin-1") + data


def post_npy(client: LocalTarget, body: bytes) -> requests.Response:
    headers = {**auth(client), "Content-Type": "application/x-npy"}
    url = f"{client.url}/v1/models/guard:predict"
    return requests.post(url, data=body, headers=headers, timeout=60)


def test_npy_headers_over_numpys_limit_are_refused(port, client):
    x = rows(2)
    buf = io.BytesIO()
    np.save(buf, x)
    assert post_npy(client, buf.getvalue()).status_code == 200
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {x.shape}, }}" + " " * 20_000
    r = post_npy(client, npy_with_header(header, x.tobytes()))
    assert r.status_code == 400
    assert "over the limit of 10000" in r.json()["error"]
    assert predict_ok(client)


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ("(0, 10**30)", "more than an array can hold"),
        ("(0, 9223372036854775808)", "more than an array can hold"),
        ("(0,) + (1,) * 100", "101 dimensions; at most 32"),
        ("(True, 64)", "dimension 0 of the shape must be a non-negative whole number"),
    ],
)
def test_npy_shapes_numpy_cannot_hold_are_400(port, client, shape, fragment):
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {eval(shape)!r}, }}"
    r = post_npy(client, npy_with_header(header, b"" if "True" not in shape else b"\0" * 256))
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([0, 9223372036854775808], "more than an array can hold"),
        ([0] + [1] * 100, "101 dimensions; at most 32"),
    ],
)
def test_v2_shapes_numpy_cannot_hold_are_400(port, client, shape, fragment):
    tensor = {"name": "input-0", "shape": shape, "datatype": "FP32", "data": []}
    url = f"{client.url}/v2/models/guard/infer"
    r = requests.post(url, json={"inputs": [tensor]}, headers=auth(client), timeout=60)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]
    assert predict_ok(client)


# -- 5. versions --------------------------------------------------------------------------------
def test_a_5000_digit_version_is_400_over_http_and_one_line_in_the_cli(port, client, settings):
    url = f"{client.url}/v1/models/guard/deploy"
    for body in ({"ref": HUGE}, {"ref": "0" * 4990 + "1" * 10}):
        r = requests.post(url, json=body, headers=auth(client), timeout=60)
        assert r.status_code == 400, r.text
        assert "out of range" in r.json()["error"]
        assert len(r.text) < 600
    r = requests.post(
        f"{client.url}/v1/models/guard/rollback", json={"to": HUGE}, headers=auth(client)
    )
    assert r.status_code == 400
    assert len(r.text) < 600
    for argv in (["deploy", f"guard@{HUGE}"], ["rollback", "guard", "--to", HUGE]):
        done = subprocess.run(
            [sys.executable, "-m", "kernel_magics.cli", "--home", str(settings.home), *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert "out of range" in done.stderr
        assert len(done.stderr) < 1000, done.stderr
        if argv[0] == "deploy":  # (argparse adds its usage line to a bad --to)
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert predict_ok(client)


# -- 6. error bodies never repeat unbounded input -----------------------------------------------
def test_error_bodies_quote_at_most_a_few_hundred_characters(port, client):
    big = "k" * 2_000_000
    h = auth(client)
    base = client.url
    answers = [
        requests.post(
            f"{base}/v1/models/guard:predict",
            json={"instances": rows(1).tolist(), big: 1},
            headers=h,
            timeout=60,
        ),
        requests.post(
            f"{base}/v1/models/guard/invocations", json={big: [[1.0] * 32]}, headers=h, timeout=60
        ),
        requests.post(
            f"{base}/v2/models/guard/infer",
            json={
                "inputs": [
                    {"name": "input-0", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}
                ],
                "outputs": [{"name": big}],
            },
            headers=h,
            timeout=60,
        ),  # fmt: skip
        requests.delete(f"{base}/v1/models/{'n' * 60_000}", headers=h, timeout=60),
        requests.post(f"{base}/v1/models/guard/deploy", json={big[:300_000]: 1}, headers=h),
        requests.post(f"{base}/v1/models/{'n' * 60_000}/deploy", headers=h, timeout=60),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, r.text[:300]
        assert len(r.content) < 2500, (r.status_code, r.text[:300])
        assert "characters)" in r.json()["error"] or r.status_code in (404, 405)
    assert predict_ok(client)
