"""Tests of the test peers themselves, so a failing hub test can trust its counterpart.

Only the standard library is used as client (http.client, socket, subprocess), so these tests
do not depend on the HTTP stack the hub itself uses.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .faultproxy import FaultProxy
from .medplum import MedplumPeer, MedplumPeerError
from .postgres import PostgresCluster, PostgresPeerError
from .receiver import RecordingReceiver

LOCALHOST = "127.0.0.1"


def _request(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _connect_and_exchange(port: int, data: bytes) -> bytes:
    """Connect, send raw bytes, return the first chunk of the answer (b"" on EOF)."""
    with socket.create_connection((LOCALHOST, port), timeout=2) as sock:
        time.sleep(0.05)  # give the peer time to act on the connection first
        sock.sendall(data)
        return sock.recv(1024)


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    return conn.getresponse().read()


def _peer_threads() -> set[str]:
    prefixes = ("faultproxy-", "recording-receiver")
    return {t.name for t in threading.enumerate() if t.name.startswith(prefixes)}


@pytest.fixture
def receiver() -> Iterator[RecordingReceiver]:
    with RecordingReceiver() as rx:
        yield rx


@pytest.fixture
def proxy(receiver: RecordingReceiver) -> Iterator[FaultProxy]:
    with FaultProxy(LOCALHOST, receiver.port) as fp:
        yield fp


# -- Medplum -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def medplum() -> Iterator[MedplumPeer]:
    with MedplumPeer(strict=True) as peer:
        yield peer


@pytest.mark.peer  # needs Node.js and `npm ci` in tests/peers/medplum; deliberately not skipped
def test_medplum_put_then_get_detected_issue(medplum: MedplumPeer) -> None:
    assert medplum.base_url == f"http://{LOCALHOST}:{medplum.port}/fhir/R4"
    issue = {
        "resourceType": "DetectedIssue",
        "id": "peer-test-1",
        "status": "final",
        "severity": "high",
        "detail": "Alarm not acknowledged within 5 minutes",
    }
    status, headers, stored = medplum.request("PUT", "DetectedIssue/peer-test-1", issue)
    assert status in (200, 201), stored
    assert headers["etag"].startswith('W/"')

    got = medplum.read("DetectedIssue", "peer-test-1")
    assert got is not None
    assert got["id"] == "peer-test-1"
    assert got["status"] == "final"
    assert got["detail"] == issue["detail"]
    assert [r["id"] for r in medplum.search("DetectedIssue", _id="peer-test-1")] == ["peer-test-1"]
    assert medplum.read("DetectedIssue", "does-not-exist") is None


@pytest.mark.peer
def test_medplum_strict_mode_rejects_invalid_resource(medplum: MedplumPeer) -> None:
    bad = {"resourceType": "DetectedIssue", "id": "bad-1", "foo": 1}  # no status, unknown field
    status, _, outcome = medplum.request("PUT", "DetectedIssue/bad-1", bad)
    assert status == 400
    assert outcome["resourceType"] == "OperationOutcome"


def test_medplum_missing_node_modules_tells_to_run_npm_ci(tmp_path: Path) -> None:
    with pytest.raises(MedplumPeerError, match="npm ci"):
        MedplumPeer(app_dir=tmp_path).start()


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    with PostgresCluster({"synchronous_commit": "off"}) as cluster:
        yield cluster


def _psql(cluster: PostgresCluster, dsn: str, sql: str) -> str:
    out = subprocess.run(
        [str(cluster.bin_dir / "psql"), "-X", "-A", "-t", "-c", sql, dsn],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


@pytest.mark.pg
def test_postgres_create_database_and_select(pg: PostgresCluster) -> None:
    url = pg.create_database("peer_test")
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/peer_test"
    assert _psql(pg, pg.dsn("peer_test"), "select 1") == "1"
    assert _psql(pg, pg.dsn("peer_test"), "select current_database()") == "peer_test"


@pytest.mark.pg
def test_postgres_extra_settings_applied_and_loopback_only(pg: PostgresCluster) -> None:
    assert _psql(pg, pg.dsn(), "SHOW synchronous_commit") == "off"
    assert _psql(pg, pg.dsn(), "SHOW listen_addresses") == "127.0.0.1"


@pytest.mark.pg
def test_postgres_stop_removes_data_and_bad_setting_reports_log() -> None:
    with PostgresCluster() as cluster:
        base = cluster.base_dir
        assert (base / "data" / "PG_VERSION").is_file()
    assert not base.exists()

    with pytest.raises(PostgresPeerError, match="no_such_setting"):
        PostgresCluster({"no_such_setting": 1}).start()


# -- FaultProxy ----------------------------------------------------------------------------------


def test_faultproxy_pass_forwards(proxy: FaultProxy, receiver: RecordingReceiver) -> None:
    status, _, body = _request(proxy.port, "POST", "/via-proxy", b'{"a":1}')
    assert (status, body) == (200, b"{}")
    [req] = receiver.requests()
    assert (req.method, req.path, req.body) == ("POST", "/via-proxy", b'{"a":1}')
    assert proxy.connections == 1


def test_faultproxy_refuse_then_reopen_same_port(
    proxy: FaultProxy, receiver: RecordingReceiver
) -> None:
    port = proxy.port
    proxy.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCALHOST, port), timeout=2).close()
    proxy.set_mode("pass")
    assert proxy.port == port
    assert _request(port)[0] == 200
    assert len(receiver.requests()) == 1


def test_faultproxy_reset_sends_rst(proxy: FaultProxy, receiver: RecordingReceiver) -> None:
    proxy.set_mode("reset")
    # On loopback the RST can even beat connect()'s return, so connect is inside the check.
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # RST, not a mere EOF
        _connect_and_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # incl. RemoteDisconnected
        _request(proxy.port)
    assert receiver.requests() == []
    assert proxy.connections == 2


def test_faultproxy_blackhole_times_out(proxy: FaultProxy, receiver: RecordingReceiver) -> None:
    proxy.set_mode("blackhole")
    with socket.create_connection((LOCALHOST, proxy.port), timeout=2) as held:
        held.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(TimeoutError):
            _request(proxy.port, timeout=0.3)
        proxy.set_mode("pass")  # drops the blackholed connections
        assert held.recv(1024) == b""
    assert receiver.requests() == []
    assert _request(proxy.port)[0] == 200


def test_faultproxy_http_status_answers_itself_with_keep_alive(
    proxy: FaultProxy, receiver: RecordingReceiver
) -> None:
    proxy.set_mode("http_status", status=503, headers={"Retry-After": "2"})
    conn = http.client.HTTPConnection(LOCALHOST, proxy.port, timeout=5)
    try:
        for i in range(2):
            conn.request("PUT", f"/fhir/R4/Observation/{i}", body=b'{"resourceType":"Basic"}')
            resp = conn.getresponse()
            assert resp.status == 503
            assert resp.getheader("Retry-After") == "2"
            assert json.loads(resp.read())["status"] == 503
    finally:
        conn.close()
    assert proxy.requests_answered == 2
    assert proxy.connections == 1  # both requests on one keep-alive connection
    assert receiver.requests() == []

    proxy.set_mode("http_status", status=429, headers={"Retry-After": "7"}, body={"x": 1})
    status, headers, body = _request(proxy.port, "POST", "/", b"abc")
    assert (status, headers["retry-after"], json.loads(body)) == (429, "7", {"x": 1})


def test_faultproxy_mode_change_drops_pooled_connection(
    proxy: FaultProxy, receiver: RecordingReceiver
) -> None:
    conn = http.client.HTTPConnection(LOCALHOST, proxy.port, timeout=5)
    try:
        assert _get(conn, "/first") == b"{}"
        proxy.set_mode("reset")
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            _get(conn, "/second")
    finally:
        conn.close()
    assert [r.path for r in receiver.requests()] == ["/first"]


def test_faultproxy_target_down_resets_client() -> None:
    with socket.socket() as placeholder:
        placeholder.bind((LOCALHOST, 0))
        dead_port = placeholder.getsockname()[1]  # bound but not listening: refuses
        with FaultProxy(LOCALHOST, dead_port) as fp, pytest.raises(ConnectionResetError):
            _request(fp.port)


def test_faultproxy_and_receiver_leave_no_threads() -> None:
    before = _peer_threads()
    with RecordingReceiver() as rx, FaultProxy(LOCALHOST, rx.port) as fp:
        fp.set_mode("blackhole")
        held = socket.create_connection((LOCALHOST, fp.port), timeout=2)
        assert _peer_threads() - before
    try:
        assert held.recv(10) == b""
    finally:
        held.close()
    assert _peer_threads() == before


# -- RecordingReceiver ---------------------------------------------------------------------------


def test_receiver_records_in_order_per_key(receiver: RecordingReceiver) -> None:
    keys = ["alpha", "beta", "gamma"]

    def put_sequence(key: str) -> None:
        conn = http.client.HTTPConnection(LOCALHOST, receiver.port, timeout=5)
        try:
            for seq in range(20):
                conn.request(
                    "PUT",
                    f"/items/{key}",
                    body=json.dumps({"seq": seq}).encode(),
                    headers={"Content-Type": "application/json", "X-Key": key},
                )
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (200, b"{}")
        finally:
            conn.close()

    threads = [threading.Thread(target=put_sequence, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    records = receiver.wait_for(60, timeout=5)
    assert len(records) == 60
    assert receiver.connections == 3
    for key in keys:
        mine = [r for r in records if r.path == f"/items/{key}"]
        assert [json.loads(r.body)["seq"] for r in mine] == list(range(20))
        assert all(r.method == "PUT" and r.headers["x-key"] == key for r in mine)
        assert all(r.headers["content-type"] == "application/json" for r in mine)
    times = [r.time for r in records]
    assert times == sorted(times)
    _method, _path, headers, body, _ = records[0]  # records are plain tuples too
    assert isinstance(headers, dict)
    assert isinstance(body, bytes)

    receiver.clear()
    assert receiver.requests() == []


def test_receiver_set_status_and_pipelining(receiver: RecordingReceiver) -> None:
    receiver.set_status(429, {"Retry-After": "1"})
    status, headers, body = _request(receiver.port, "POST", "/x", b"1")
    assert (status, headers["retry-after"], body) == (429, "1", b"{}")

    receiver.set_status(201, body={"id": "abc"})
    pipelined = b"".join(
        f"POST /p/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{i:02d}".encode()
        for i in range(3)
    )
    with socket.create_connection((LOCALHOST, receiver.port), timeout=5) as sock:
        sock.sendall(pipelined)
        data = b""
        while data.count(b'{"id": "abc"}') < 3:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed early: {data!r}"
            data += chunk
    assert data.count(b"HTTP/1.1 201 Created") == 3
    assert [(r.path, r.body) for r in receiver.requests()[1:]] == [
        ("/p/0", b"00"),
        ("/p/1", b"01"),
        ("/p/2", b"02"),
    ]


def test_receiver_throughput_sanity(receiver: RecordingReceiver) -> None:
    """5 000 small pipelined PUTs must finish quickly (benchmarks rely on this sink)."""
    n = 5000
    payload = b'{"v":1}'
    request = (
        b"PUT /bench HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    started = time.perf_counter()
    with socket.create_connection((LOCALHOST, receiver.port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(request * n,))
        sender.start()
        marker, tail, received = b"HTTP/1.1 200 OK", b"", 0
        while received < n:
            chunk = sock.recv(1 << 20)
            assert chunk, f"connection closed after {received} responses"
            data = tail + chunk  # a marker may straddle two reads; the tail is too short to recount
            received += data.count(marker)
            tail = data[-(len(marker) - 1) :]
        sender.join()
    elapsed = time.perf_counter() - started
    assert receiver.count() == n
    assert elapsed < 5.0, f"{n} requests took {elapsed:.2f} s"
