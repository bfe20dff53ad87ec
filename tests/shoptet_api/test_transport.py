"""The one outbound-HTTP choke point: wall-clock deadlines and bounded answers, over loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from shoptet_api import transport
from shoptet_api.errors import ShoptetInvalidResponse, ShoptetTimeoutError
from shoptet_api.types import (
    MAX_JSON_DEPTH,
    JSONTooDeep,
    ResponseShapeError,
    load_json,
    parse_id,
)

Serve = Callable[[socket.socket], None]


@pytest.fixture
def raw_server() -> Iterator[Callable[[Serve], str]]:
    """A one-connection-at-a-time HTTP server on loopback whose answer a test writes by hand."""
    sockets: list[socket.socket] = []

    def start(serve: Serve) -> str:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        sockets.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)  # the request; its content does not matter here
                    with contextlib.suppress(OSError):  # the client hung up
                        serve(conn)

        threading.Thread(target=loop, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/x"

    yield start
    for listener in sockets:
        listener.close()


def trickle_body(conn: socket.socket) -> None:
    """Headers at once, then a 100-byte body one byte every 0.1 s (10 s in all)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(100):
        conn.sendall(b"x")
        time.sleep(0.1)


def test_a_trickled_body_ends_at_the_deadline(raw_server: Any) -> None:
    url = raw_server(trickle_body)

    with pytest.raises(ShoptetTimeoutError, match=r"no complete answer within 0\.5 s"):
        transport.send(
            "GET",
            url,
            timeout=(1.0, 1.0),
            deadline=time.monotonic() + 0.5,
            endpoint="GET test",
        )


def test_without_a_deadline_connect_plus_read_bounds_the_whole_call(
    raw_server: Any,
) -> None:
    url = raw_server(trickle_body)

    # Each byte arrives within the 0.6 s read timeout; only the total (0.4 + 0.6 s) ends it.
    with pytest.raises(ShoptetTimeoutError, match=r"no complete answer within 1 s"):
        transport.send("GET", url, timeout=(0.4, 0.6), endpoint="GET test")


def test_a_call_with_no_time_left_is_not_sent(raw_server: Any) -> None:
    seen: list[bool] = []
    url = raw_server(lambda conn: seen.append(True))

    with pytest.raises(ShoptetTimeoutError, match="no time left") as caught:
        transport.send(
            "GET", url, timeout=(1, 1), deadline=time.monotonic() - 1, endpoint="GET t"
        )

    assert caught.value.request_sent is False
    assert seen == []


def test_an_answer_within_its_deadline_is_read_and_the_connection_reused(
    raw_server: Any,
) -> None:
    def keep_alive(conn: socket.socket) -> None:
        for _ in range(2):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(65536)

    url = raw_server(keep_alive)
    session = transport.new_session()

    first = transport.send(
        "GET", url, timeout=(1, 1), endpoint="GET t", session=session
    )
    second = transport.send(
        "GET", url, timeout=(1, 1), endpoint="GET t", session=session
    )

    assert first.content == second.content == b"ok"


def test_a_declared_oversized_answer_is_refused_unread(raw_server: Any) -> None:
    def huge(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n")
        time.sleep(2)

    url = raw_server(huge)

    with pytest.raises(ShoptetInvalidResponse, match="larger than 1000 bytes"):
        transport.send("GET", url, timeout=(1, 5), endpoint="GET t", max_bytes=1000)


def test_an_undeclared_oversized_answer_stops_at_the_cap(raw_server: Any) -> None:
    def chunked(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(200):
            conn.sendall(b"y" * 1000)

    url = raw_server(chunked)

    with pytest.raises(ShoptetInvalidResponse, match="larger than 5000 bytes"):
        transport.send("GET", url, timeout=(1, 5), endpoint="GET t", max_bytes=5000)


def test_a_plain_session_gets_deadlines_too(raw_server: Any) -> None:
    url = raw_server(trickle_body)

    with (
        requests.Session() as plain,
        pytest.raises(ShoptetTimeoutError, match="deadline"),
    ):
        transport.send(
            "GET",
            url,
            timeout=(1, 1),
            deadline=time.monotonic() + 0.3,
            endpoint="GET t",
            session=plain,
        )


def test_load_json_refuses_deep_nesting_whatever_python_could_parse() -> None:
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    too_deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    hostile = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"

    assert load_json(ok) is not None
    assert [load_json(s) for s in ("null", "1", '"x"', "[]")] == [None, 1, "x", []]
    assert load_json(json.dumps({"a": {"b": [1, {"c": 2}]}})) == {
        "a": {"b": [1, {"c": 2}]}
    }
    for body in (too_deep, hostile):
        with pytest.raises(ResponseShapeError, match="nested"):
            load_json(body)
    with pytest.raises(ResponseShapeError, match="not JSON"):
        load_json(b"<html>")


def test_load_json_takes_the_depth_its_caller_allows() -> None:
    assert load_json("[[1]]", max_depth=2) == [[1]]
    with pytest.raises(JSONTooDeep, match="deeper than 1 levels"):
        load_json("[[1]]", max_depth=1)
    # Brackets inside strings, escaped quotes included, are not nesting.
    assert load_json('{"a": "[[[[{{{{"}', max_depth=1) == {"a": "[[[[{{{{"}
    assert load_json(r'["\"[[[", "]]]"]', max_depth=1) == ['"[[[', "]]]"]


def test_load_json_refuses_depth_before_parsing_and_decodes_bytes_as_json_does() -> (
    None
):
    # Too deep and not JSON: the depth is what is reported (it is checked first).
    with pytest.raises(JSONTooDeep):
        load_json("[" * (MAX_JSON_DEPTH + 1) + "not json")
    assert load_json('{"a": 1}'.encode("utf-16")) == {"a": 1}
    with pytest.raises(ResponseShapeError, match="not JSON"):
        load_json(b"\xff\xfe\x00")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        ("42", 42),
        (2**63 - 1, 2**63 - 1),
        (2**63, None),
        (2**70, None),
        ("9999999999999999999", None),
        ("00042", 42),
        (0, None),
        (-1, None),
        (True, None),
        (1.0, None),
        ("4²", None),
        (" 42", None),
        (None, None),
    ],
)
def test_parse_id_takes_only_ids_the_database_can_hold(
    value: object, expected: int | None
) -> None:
    assert parse_id(value) == expected
