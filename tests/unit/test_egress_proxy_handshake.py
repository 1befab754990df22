"""SniProxy's two clocks: a short peek window for silence, a longer budget to finish a handshake.

A client on a slow link may take seconds to deliver its ClientHello or request head; once
its first byte arrived it gets `handshake_timeout` (here 1.5 s) to finish, while a client
that sends nothing is still handed to the opaque path after `peek_timeout` (here 0.2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.egress import gateway
from tests.unit.gateway_cli import gateway_argv, parsed_config
from tests.unit.test_egress_proxy import (
    OPENAI,
    Harness,
    banner_handler,
    expect_reset,
    http_server,
    read_response,
    real_hello,
    running_harness,
    serve,
)

pytestmark = pytest.mark.timeout(30)

PEEK_S = 0.2
BUDGET_S = 1.5
HEAD = b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nUser-Agent: slow-link/1.0\r\n\r\n"


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_harness(peek_timeout=PEEK_S, handshake_timeout=BUDGET_S) as h:
        yield h


async def trickle(writer: asyncio.StreamWriter, data: bytes, piece: int, gap: float) -> None:
    """Send `data` `piece` bytes at a time, `gap` seconds apart, as a slow link would."""
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(data), piece):
            if i:
                await asyncio.sleep(gap)
            writer.write(data[i : i + piece])
            await writer.drain()


async def reset_after(reader: asyncio.StreamReader, since: float) -> float:
    await expect_reset(reader.read(100))
    return asyncio.get_running_loop().time() - since


# TLS ---------------------------------------------------------------------------------


async def test_slow_hello_past_the_peek_window_passes(harness: Harness) -> None:
    hello = real_hello("api.openai.com")
    got: list[bytes] = []

    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readexactly(len(hello)))
        writer.close()

    server, port = await serve(raw)
    harness.routes[(OPENAI, 443)] = port
    piece = len(hello) // 8 + 1  # 8 pieces, 0.1 s apart: done after 0.7 s, past the 0.2 s window
    async with server:
        reader, writer = await harness.connect((OPENAI, 443))
        start = asyncio.get_running_loop().time()
        await trickle(writer, hello, piece, 0.1)
        assert asyncio.get_running_loop().time() - start > 3 * PEEK_S
        assert await reader.read() == b""
        writer.close()
    assert got == [hello]
    assert harness.reasons() == [("allow", "sni_allowed")]


async def test_hello_still_incomplete_at_the_budget_is_reset(harness: Harness) -> None:
    hello = real_hello("api.openai.com")
    seen: list[bytes] = []
    server, port = await serve(http_server(seen))
    harness.routes[(OPENAI, 443)] = port
    async with server:
        reader, writer = await harness.connect((OPENAI, 443))
        start = asyncio.get_running_loop().time()
        # One byte every 20 ms keeps the link busy for longer than the budget: the budget
        # runs from the first byte, it is not an idle timer that each byte restarts.
        sender = asyncio.create_task(trickle(writer, hello, 1, 0.02))
        elapsed = await reset_after(reader, start)
        await sender
    assert BUDGET_S - 0.1 <= elapsed < BUDGET_S + 0.8
    assert seen == []
    assert harness.reasons() == [("deny", "peek_timeout")]


async def test_partial_record_header_then_silence_is_never_opaque(harness: Harness) -> None:
    # The destination is resolved for an allowed name, so the opaque path would pass it.
    reader, writer = await harness.connect((OPENAI, 443))
    writer.write(b"\x16\x03")
    start = asyncio.get_running_loop().time()
    elapsed = await reset_after(reader, start)
    assert BUDGET_S - 0.1 <= elapsed < BUDGET_S + 0.8
    assert harness.reasons() == [("deny", "peek_timeout")]


# HTTP -------------------------------------------------------------------------------


async def test_slow_request_head_past_the_peek_window_passes(harness: Harness) -> None:
    seen: list[bytes] = []
    server, port = await serve(http_server(seen))
    harness.routes[(OPENAI, 80)] = port
    async with server:
        reader, writer = await harness.connect((OPENAI, 80))
        start = asyncio.get_running_loop().time()
        await trickle(writer, HEAD, 8, 0.07)  # 9 pieces: done after 0.56 s
        assert asyncio.get_running_loop().time() - start > 2 * PEEK_S
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 OK")
        writer.close()
    assert seen == [HEAD]
    assert harness.reasons() == [("allow", "host_allowed")]


async def test_request_head_still_incomplete_at_the_budget_is_reset(harness: Harness) -> None:
    seen: list[bytes] = []
    server, port = await serve(http_server(seen))
    harness.routes[(OPENAI, 80)] = port
    head = b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
    async with server:
        reader, writer = await harness.connect((OPENAI, 80))
        start = asyncio.get_running_loop().time()
        sender = asyncio.create_task(trickle(writer, head, 1, 0.02))  # ~5 s to finish
        elapsed = await reset_after(reader, start)
        await sender
    assert BUDGET_S - 0.1 <= elapsed < BUDGET_S + 0.8
    assert seen == []
    assert harness.reasons() == [("deny", "peek_timeout")]


# Silence ----------------------------------------------------------------------------


async def test_silent_client_goes_opaque_after_the_short_window(harness: Harness) -> None:
    server, port = await serve(banner_handler)
    harness.routes[(OPENAI, 25)] = port
    async with server:
        reader, writer = await harness.connect((OPENAI, 25))
        start = asyncio.get_running_loop().time()
        assert await reader.readline() == b"220 smtp.example ready\r\n"
        elapsed = asyncio.get_running_loop().time() - start
        writer.close()
    # The banner comes once the peek window ends, long before the handshake budget would.
    assert PEEK_S - 0.05 <= elapsed < BUDGET_S / 2
    assert harness.reasons() == [("allow", "opaque_resolved")]


# Plumbing ---------------------------------------------------------------------------


def test_budget_flows_from_env_to_the_gateway_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECLAWD_HANDSHAKE_TIMEOUT", "3.5")
    settings = Settings.from_env(state_dir=tmp_path, upstream_dns="192.0.2.53")
    assert settings.handshake_timeout == 3.5
    argv = gateway_argv(settings)
    assert argv[argv.index("--handshake-timeout") + 1] == "3.5"
    assert parsed_config(argv, monkeypatch).handshake_timeout == 3.5


def test_budget_defaults_to_ten_seconds_and_must_be_a_positive_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DECLAWD_HANDSHAKE_TIMEOUT", raising=False)
    assert Settings.from_env(state_dir=tmp_path).handshake_timeout == 10.0
    assert gateway.GatewayConfig(state_dir=tmp_path).handshake_timeout == 10.0
    monkeypatch.setenv("DECLAWD_HANDSHAKE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="DECLAWD_HANDSHAKE_TIMEOUT: not a number: 'soon'"):
        Settings.from_env(state_dir=tmp_path)
    monkeypatch.setenv("DECLAWD_HANDSHAKE_TIMEOUT", "0")
    with pytest.raises(ValueError, match="handshake_timeout: must be a positive"):
        Settings.from_env(state_dir=tmp_path)
