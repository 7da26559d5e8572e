"""The FastMCP peer of benches/compare/mcp.sh: one tool, `test_simple_text`, with no arguments,
returning the same fixed text as mcp_conformance_server's tool of that name.

    python fastmcp_server.py                 # stdio (FastMCP's default transport)
    python fastmcp_server.py --http PORT     # Streamable HTTP at http://127.0.0.1:PORT/mcp

FastMCP runs with its defaults (SSE-framed responses, sessions, Host/Origin checks on
loopback) except for two things a deployment tuned for speed would also turn off: the start
banner and uvicorn's per-request access log line. Pinned by scripts/fastmcp-venv.
"""

import argparse

from fastmcp import FastMCP

TEXT = "This is a simple text response for testing."

mcp = FastMCP("fastmcp-bench-peer")


@mcp.tool
def test_simple_text():
    """Returns a fixed text."""
    return TEXT


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve HTTP on 127.0.0.1:PORT")
    args = parser.parse_args()
    if args.http is None:
        mcp.run(show_banner=False)
    else:
        mcp.run(
            transport="http",
            host="127.0.0.1",
            port=args.http,
            show_banner=False,
            uvicorn_config={"access_log": False},
        )


if __name__ == "__main__":
    main()
