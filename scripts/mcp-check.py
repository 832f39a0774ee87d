"""The MCP server exercised by the official MCP Python SDK client (`pip install mcp`):
over streamable HTTP at a real pyrovm's /mcp, list the tools, call `execute`, run a
sandbox session. Usage: mcp-check.py URL TOKEN [TVM_BIN] (a running pyrovm with that token; with the
`tvm` binary, also over stdio through `tvm mcp`)."""
import asyncio
import re
import sys

import os

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

WANT_TOOLS = {"execute", "list_languages", "sandbox_create", "sandbox_execute",
              "sandbox_write_file", "sandbox_read_file", "sandbox_list_files", "sandbox_delete"}


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def session_checks(session):
    await session.initialize()
    tools = await session.list_tools()
    names = {t.name for t in tools.tools}
    assert WANT_TOOLS <= names, names
    for t in tools.tools:
        assert t.input_schema.get("type") == "object", (t.name, t.input_schema)
    langs = await session.call_tool("list_languages", {})
    assert "python" in text(langs), text(langs)

    r = await session.call_tool("execute", {"language": "python", "code": "print(6*7)"})
    assert not r.is_error and "42" in text(r) and "status: completed" in text(r), text(r)
    r = await session.call_tool("execute", {"language": "python", "code": "import sys; sys.exit(3)"})
    assert r.is_error and "exit_code: 3" in text(r), text(r)
    r = await session.call_tool("execute", {"language": "cobol", "code": "x"})
    assert r.is_error and "unknown_language" in text(r), text(r)
    r = await session.call_tool("execute", {"language": "python", "code": "print(open('d.txt').read())",
                                            "files": {"d.txt": "from a file"}})
    assert not r.is_error and "from a file" in text(r), text(r)

    r = await session.call_tool("sandbox_create", {"ttl_s": 120})
    assert not r.is_error, text(r)
    sid = re.search(r"sandbox id: (\S+)", text(r)).group(1)
    r = await session.call_tool("sandbox_write_file", {"id": sid, "path": "data/in.txt", "content": "hello"})
    assert not r.is_error, text(r)
    r = await session.call_tool("sandbox_execute", {"id": sid, "language": "python",
                                                    "code": "open('out.txt','w').write(open('data/in.txt').read().upper())"})
    assert not r.is_error, text(r)
    r = await session.call_tool("sandbox_read_file", {"id": sid, "path": "out.txt"})
    assert text(r) == "HELLO", text(r)
    r = await session.call_tool("sandbox_list_files", {"id": sid, "path": ""})
    assert "out.txt" in text(r) and "data" in text(r), text(r)
    r = await session.call_tool("sandbox_delete", {"id": sid})
    assert not r.is_error, text(r)
    r = await session.call_tool("sandbox_execute", {"id": sid, "language": "python", "code": "print(1)"})
    assert r.is_error and "not_found" in text(r), text(r)


async def over_http(url, token):
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client:
        async with streamable_http_client(url + "/mcp", http_client=client) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session_checks(session)
    # Without the token: refused before MCP.
    bad = create_mcp_http_client(headers={"Authorization": "Bearer wrong"})
    async with bad:
        r = await bad.post(url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                           headers={"accept": "application/json, text/event-stream"})
        assert r.status_code == 401, r.status_code
    print("mcp over HTTP: ok")


async def over_stdio(tvm, url, token):
    params = StdioServerParameters(command=tvm, args=["mcp"],
                                   env={**os.environ, "TVM_SERVER": url, "TVM_TOKEN": token})
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session_checks(session)
    print("mcp over stdio (tvm mcp): ok")


if __name__ == "__main__":
    asyncio.run(over_http(sys.argv[1], sys.argv[2]))
    if len(sys.argv) > 3:
        asyncio.run(over_stdio(sys.argv[3], sys.argv[1], sys.argv[2]))
