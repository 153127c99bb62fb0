"""The pieces of the raw gRPC driver and of perf_analyzer compatibility that need no server: HTTP/2 frames of a
prepared call, what ``Connection.feed`` makes of the server's frames (hpack-encoded as a server would), the
``start:end:step`` ranges, perf_analyzer's CSV from a report, the CPU verdict and the recorder's run window.
The same pieces against a real Triton: tests/integration/test_loadtest_perf.py."""

from __future__ import annotations

import csv
import socket
import struct
from pathlib import Path
from typing import Any

import hpack
import pytest

from toolkit.loadtest.cpu import verdict
from toolkit.loadtest.h2wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Connection,
    H2Error,
    frame,
    prepare_call,
)
from toolkit.loadtest.perfcsv import HEADER, write_perf_csv
from toolkit.loadtest.recorder import Recorder
from toolkit.loadtest.scenario import LoadTestError
from toolkit.loadtest.sweep import parse_range


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 3], "big")
        out.append(
            (data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9], "big"), data[pos + 9 : pos + 9 + n])
        )
        pos += 9 + n
    assert pos == len(data)
    return out


def test_prepared_call_is_headers_then_data_frames_on_the_given_stream() -> None:
    message = bytes(range(256)) * 100  # 25,600 bytes: two DATA frames of at most 16,384
    call = prepare_call("127.0.0.1:8001", message)
    got = frames(call.encode(7))
    assert [(t, f, s) for t, f, s, _ in got] == [(HEADERS, END_HEADERS, 7), (DATA, 0, 7), (DATA, END_STREAM, 7)]
    headers = dict(hpack.Decoder().decode(got[0][3]))
    assert headers == {":method": "POST", ":scheme": "http", ":path": "/inference.GRPCInferenceService/ModelInfer",
                       ":authority": "127.0.0.1:8001", "content-type": "application/grpc", "te": "trailers",
                       "user-agent": "tritonctl-loadtest"}  # fmt: skip
    body = got[1][3] + got[2][3]
    assert body[0] == 0 and struct.unpack(">I", body[1:5])[0] == len(message) and body[5:] == message
    assert call.data_len == len(body) and len(got[1][3]) == 16384
    assert frames(call.encode(9))[2][2] == 9  # only the stream ids change between calls
    with pytest.raises(LoadTestError, match="up to 65536"):
        prepare_call("h:1", b"x" * 70000)


class _Server:
    """The server side's HPACK encoder: its dynamic table follows from block to block, as Triton's does."""

    def __init__(self) -> None:
        self.enc = hpack.Encoder()

    def headers(self, sid: int, fields: list[tuple[str, str]], end: bool) -> bytes:
        return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, self.enc.encode(fields))


@pytest.fixture
def conn() -> Any:
    a, b = socket.socketpair()
    c = Connection(a)
    yield c
    a.close()
    b.close()


def _start(c: Connection, n: int) -> list[int]:
    call = prepare_call("h:1", b"\x01\x02")
    for i in range(n):
        assert c.start(call, user=i, target=0, t0=0.0) is not None
    return sorted(c.streams)


def test_feed_answers_ok_errors_and_keeps_the_hpack_table_in_step(conn: Connection) -> None:
    s1, s3, s5 = _start(conn, 3)
    srv = _Server()
    ok = [(":status", "200"), ("content-type", "application/grpc")]
    wire = b"".join(
        [
            srv.headers(s1, ok, False),
            frame(DATA, 0, s1, b"\x00\x00\x00\x00\x02ab"),
            srv.headers(s1, [("grpc-status", "0")], True),
            # trailers-only error, split over HEADERS + CONTINUATION, percent-encoded message
            *(lambda blk: [frame(HEADERS, END_STREAM, s3, blk[:3]), frame(CONTINUATION, END_HEADERS, s3, blk[3:])])(
                srv.enc.encode([*ok, ("grpc-status", "3"), ("grpc-message", "unexpected shape %5B63%5D")])
            ),
            srv.headers(s5, ok, False),  # the same fields again: now indexed from the table
        ]
    )
    done = conn.feed(wire[:-4])  # a partial frame waits for the rest
    assert [(s.user, err) for s, err in done] == [(0, None), (1, "gRPC INVALID_ARGUMENT: unexpected shape [63]")]
    done = conn.feed(
        wire[-4:] + frame(DATA, 0, s5, b"\x00\x00\x00\x00\x00") + srv.headers(s5, [("grpc-status", "0")], True)
    )
    assert [(s.user, err) for s, err in done] == [(2, None)] and not conn.streams
    assert conn.consumed == 7 + 5


def test_a_cached_header_block_is_not_reused_once_the_table_changed(conn: Connection) -> None:
    """b"\\xbe" (dynamic index 62, the newest entry) means another field after the server inserts one."""
    srv, ok = _Server(), [(":status", "200"), ("content-type", "application/grpc")]
    sids = _start(conn, 3)
    answers = []
    for sid, status in zip(sids, ("0", "0", "13"), strict=True):
        answers.append(srv.headers(sid, ok, False) + frame(DATA, 0, sid, b"\x00" * 5))
        answers.append(srv.headers(sid, [("grpc-status", status)], True))
    assert answers[3][9:] == b"\xbe"  # the second "grpc-status: 0" is indexed: decoded once, then cached
    done = conn.feed(b"".join(answers))
    assert [err for _, err in done] == [None, None, "gRPC INTERNAL: "]
    (sid,) = _start(conn, 1)[-1:]
    last = frame(HEADERS, END_HEADERS | END_STREAM, sid, b"\xbe")
    done = conn.feed(srv.headers(sid, ok, False) + frame(DATA, 0, sid, b"\x00" * 5) + last)
    assert [err for _, err in done] == ["gRPC INTERNAL: "]  # 62 is now "grpc-status: 13", not the cached "0"


def test_feed_control_frames_and_stream_resets(conn: Connection) -> None:
    s1, s3 = _start(conn, 2)
    window = conn.send_window
    done = conn.feed(
        frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100))
        + frame(PING, 0, 0, b"12345678")
        + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000))
        + frame(RST_STREAM, 0, s1, struct.pack(">I", 7))
    )
    assert [(s.user, err) for s, err in done] == [(0, "gRPC RST_STREAM: error code 7")]
    assert conn.send_window == window + 1000 and conn.max_streams == 100
    owed = frames(conn.control())
    assert owed == [(SETTINGS, 1, 0, b""), (PING, 1, 0, b"12345678")]  # acks; nothing owed twice
    assert conn.control() == b""
    # an answer without trailers is an error, not a success
    srv = _Server()
    done = conn.feed(srv.headers(s3, [(":status", "200")], False) + frame(DATA, END_STREAM, s3, b"\x00" * 5))
    assert [err for _, err in done] == ["gRPC: the stream ended without a grpc-status"]
    (s5,) = _start(conn, 1)[-1:]
    done = conn.feed(srv.headers(s5, [(":status", "200"), ("grpc-status", "0")], True))  # OK, but no message
    assert [err for _, err in done] == ["gRPC OK without a response message"]
    with pytest.raises(H2Error, match=r"GOAWAY \(error code 11\) calm down"):
        conn.feed(frame(GOAWAY, 0, 0, struct.pack(">II", 1, 11) + b"calm down"))


def test_no_call_starts_without_the_server_connection_window(conn: Connection) -> None:
    call = prepare_call("h:1", b"x" * 40000)
    assert conn.start(call, 0, 0, 0.0) is not None  # 40,005 of the initial 65,535
    assert conn.start(call, 1, 0, 0.0) is None and len(conn.streams) == 1
    conn.feed(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 40005)))
    assert conn.start(call, 1, 0, 0.0) is not None


def test_no_call_starts_beyond_the_servers_concurrent_streams(conn: Connection) -> None:
    conn.feed(frame(SETTINGS, 0, 0, struct.pack(">HIHI", 0x4, 1 << 20, 0x3, 2)))  # window setting, then the limit
    call = prepare_call("h:1", b"x")
    assert [conn.start(call, i, 0, 0.0) is not None for i in range(3)] == [True, True, False]


@pytest.mark.parametrize(
    ("text", "integer", "levels"),
    [("4", True, [4]), ("1:4", True, [1, 2, 3, 4]), ("1:16:4", True, [1, 5, 9, 13]),
     ("50:200:75", False, [50, 125, 200]), ("0.5:1.5:0.5", False, [0.5, 1.0, 1.5])],
)  # fmt: skip
def test_perf_analyzer_ranges(text: str, integer: bool, levels: list[float]) -> None:
    assert parse_range(text, "--x", integer=integer) == levels


@pytest.mark.parametrize(
    ("text", "why"),
    [("a:b", "start.*end.*step"), ("1:2:3:4", "start.*end.*step"), ("0:4", "0 < start"), ("4:1", "start <= end"),
     ("1:2:0", "step > 0"), ("1.5:3", "whole numbers"), ("1:1000", "at most 100"), ("nan", "start.*end")],
)  # fmt: skip
def test_perf_analyzer_ranges_refused(text: str, why: str) -> None:
    with pytest.raises(LoadTestError, match=why):
        parse_range(text, "--concurrency-range", integer=True)


def _report(users: int, rps: float | None, rows: int, avg_ms: float) -> dict[str, Any]:
    total = {"count": 1000, "throughput_rps": 500.0, "avg_ms": avg_ms, "p50_ms": 0.9, "p90_ms": 1.2, "p95_ms": 1.5,
             "p99_ms": 2.0004}  # fmt: skip
    return {
        "users": users,
        "target_rps": rps,
        "targets": [{"label": "a", "model": "m", "batch": rows}, {"label": "b", "model": "m2", "batch": 1}],
        "client": {"total": total, "per_target": {"a": {"throughput_rps": 300.0}, "b": {"throughput_rps": 200.0}}},
        "server": {
            "m": {"requests": 300, "queue_us": 100.0, "compute_input_us": 10.0, "compute_infer_us": 300.0,
                  "compute_output_us": 20.0},
            "m2": {"requests": 100, "queue_us": 20.0, "compute_input_us": 10.0, "compute_infer_us": 100.0,
                   "compute_output_us": 20.0},
            "composing_only": {"requests": 10_000, "queue_us": 1e6},  # not a target: not averaged in
        },
    }  # fmt: skip


def test_perf_csv_has_perf_analyzers_columns_and_units(tmp_path: Path) -> None:
    path = write_perf_csv([_report(1, None, 4, 1.0), _report(2, None, 4, 1.0)], tmp_path / "sub" / "r.csv")
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["Concurrency", *HEADER] and [r[0] for r in rows[1:]] == ["1", "2"]
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["Inferences/Second"] == "1400"  # 300 req/s x 4 rows + 200 x 1
    # request-weighted over the target models: queue (300*100 + 100*20) / 400 = 80, infer 250, in 10, out 20
    assert [row[k] for k in ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")] \
        == ["80", "10", "250", "20"]  # fmt: skip
    assert row["Network+Server Send/Recv"] == str(1000 - 80 - 10 - 250 - 20)
    assert (row["Client Send"], row["Client Recv"]) == ("0", "0")
    assert [row[f"p{q} latency"] for q in (50, 90, 95, 99)] == ["900", "1200", "1500", "2000"]
    rate = list(csv.reader(write_perf_csv([_report(8, 250.0, 1, 1.0)], tmp_path / "q.csv").read_text().splitlines()))
    assert rate[0][0] == "Request Rate" and rate[1][0] == "250"


def test_cpu_verdict_names_the_bottleneck() -> None:
    v = verdict([0.95, 0.4], (0.0, 100.0), (50.0, 200.0))
    assert v["bottleneck"] == "client" and "process 0 used 95%" in v["note"] and v["host_busy"] == 0.5
    v = verdict([0.3, None], (0.0, 100.0), (97.0, 200.0))
    assert v["bottleneck"] == "machine" and "97% busy" in v["note"] and v["max"] == 0.3
    v = verdict([0.3], (0.0, 100.0), (60.0, 200.0))
    assert v["bottleneck"] is None and v["note"] == ""
    assert verdict([None], None, None)["max"] is None


def test_recorder_leaves_out_calls_started_after_the_run() -> None:
    rec = Recorder(t0=100.0, warmup=1.0)
    rec.duration = 3.0
    for start in (100.5, 101.5, 102.9, 103.0, 103.2):
        rec.add("m", 1.0, start, None)
    rec.add("m", 1.0, 103.1, "HTTP 500: late")
    d = rec.to_dict()
    assert sum(h["count"] for h in d["series"].values()) == 3 and d["per_target"]["m"]["count"] == 2
    assert d["errors"] == [] and d["last_ok"] == pytest.approx(102.901)


def test_help_shows_perf_analyzers_range_syntax_as_typed() -> None:
    """Rich renders ``:end:`` as an emoji: the help must show the syntax users type."""
    from typer.testing import CliRunner

    from toolkit.cli.main import app

    out = CliRunner().invoke(app, ["loadtest", "--help"], env={"COLUMNS": "120"}).stdout
    assert out.count("START[:END[:STEP]]") == 2 and "\N{END WITH LEFTWARDS ARROW ABOVE}" not in out
