"""Checks `claude-ipc mcp --channel` by hand with the official MCP Python SDK, driven the way
Claude Code drives a channel server: `initialize` asking for revision 2026-07-28 and declaring
the `claude/channel` capability, register, 50 messages sent from a second (plain) server, each
`notifications/claude/channel` checked for string-only meta, its latency from the sender's
acknowledgement printed, 45 acknowledged with the `ack` tool, then a second session that must
push exactly the 5 left.

    python3 -m venv /tmp/mcp-venv && /tmp/mcp-venv/bin/pip install mcp
    /tmp/mcp-venv/bin/python docs/examples/channel_sdk_check.py \
        target/debug/claude-ipc 127.0.0.1:9911 "$(mktemp -d)/data"

It is not part of the test suite (tests/it/channel.rs checks the same over raw JSON-RPC);
it needs nothing but the SDK and a free port.
"""
import json, os, sys, tempfile, time
import anyio
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

BIN = sys.argv[1]
ADDR = sys.argv[2]
DATA = sys.argv[3]
SESSION = tempfile.mkdtemp()


def params(channel, name):
    env = dict(os.environ, IPC_ADDR=ADDR, IPC_DATA_DIR=DATA,
               IPC_SESSION_FILE=os.path.join(SESSION, name), RUST_LOG="warn")
    return StdioServerParameters(command=BIN, args=["mcp"] + (["--channel"] if channel else []), env=env)


async def tee(read, pushes, out):
    async for message in read:
        if not isinstance(message, Exception):
            raw = message.message.model_dump(by_alias=True, mode="json", exclude_none=True)
            if raw.get("method") == "notifications/claude/channel":
                await pushes.send((time.monotonic(), raw["params"]))
        await out.send(message)


async def handshake(session, channel):
    caps = types.ClientCapabilities(experimental={"claude/channel": {}} if channel else None)
    result = await session.send_request(
        types.InitializeRequest(params=types.InitializeRequestParams(
            protocol_version="2026-07-28", capabilities=caps,
            client_info=types.Implementation(name="claude-code", version="2.1.232"))),
        types.InitializeResult)
    session.adopt(result)
    await session.send_notification(types.InitializedNotification())
    return result


def text(result):
    return "".join(c.text for c in result.content if hasattr(c, "text"))


async def channel_session(name, body):
    async with stdio_client(params(True, name)) as (read, write):
        pushes_in, pushes = anyio.create_memory_object_stream(1000)
        out_in, out = anyio.create_memory_object_stream(1000)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tee, read, pushes_in, out_in)
            async with ClientSession(out, write) as session:
                result = await handshake(session, True)
                await body(session, result, pushes)
            tg.cancel_scope.cancel()


async def main():
    async with stdio_client(params(False, "alice")) as (read, write):
        async with ClientSession(read, write) as alice:
            await handshake(alice, False)
            print("alice:", text(await alice.call_tool("register", {"instance_id": "alice"})))
            got = {}

            async def first(session, result, pushes):
                print("negotiated", result.protocol_version,
                      "experimental", result.capabilities.experimental)
                print(text(await session.call_tool("register", {"instance_id": "bob"})))
                latencies = []
                for n in range(50):
                    await alice.call_tool("send", {"to_id": "bob", "content": f"ping {n}"})
                    acked = time.monotonic()
                    with anyio.fail_after(10):
                        at, push = await pushes.receive()
                    latencies.append(max(0.0, at - acked))
                    assert all(isinstance(v, str) for v in push["meta"].values()), push
                    got[push["meta"]["msg_id"]] = push
                latencies.sort()
                print(f"50 pushes: p50 {latencies[25]*1000:.1f} ms, p99 {latencies[49]*1000:.1f} ms")
                print("example push:", json.dumps(push))
                with anyio.move_on_after(1.5):
                    extra = await pushes.receive()
                    raise SystemExit(f"pushed twice: {extra}")
                ids = sorted(got, key=int)
                print(text(await session.call_tool("ack", {"ids": ids[:45]})))

            await channel_session("bob", first)

            async def second(session, result, pushes):
                print(text(await session.call_tool("register", {"instance_id": "bob"})))
                again = []
                with anyio.move_on_after(3):
                    while True:
                        again.append((await pushes.receive())[1]["meta"]["msg_id"])
                print("second session pushed", len(again), "unacknowledged:", again)
                print(text(await session.call_tool("check", {}))[:200].replace("\n", " | "))

            await channel_session("bob", second)

anyio.run(main)
