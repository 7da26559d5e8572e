"""mcp_server through the official `mcp` Python SDK: what a real MCP client sees.

    python mcp_client.py --server-binary PATH --data-root DIR [--timeout SECONDS]

Drives the `mcp_server` example three ways with the SDK's `Client`:

- stdio: spawns `PATH --data-root DIR` (`StdioServerParameters`, i.e. `stdio_client`) and
  negotiates with the `initialize` handshake (`mode="legacy"`, protocol 2025-11-25);
- http_2025: spawns `PATH --http 127.0.0.1:0 --data-root DIR`, reads the endpoint from its
  stderr line `mcp_server: data root /abs; MCP endpoint http://127.0.0.1:PORT/mcp`, and
  connects over Streamable HTTP with the handshake and a session (`mode="legacy"`);
- http_2026: the same server, connecting the way the SDK does by default (`mode="auto"`):
  a `server/discover` probe, then stateless 2026-07-28 requests, each carrying its own
  protocol version, client info and capabilities in `_meta`; anything but 2026-07-28
  negotiated is a failure.

Each run lists the tools (following `nextCursor`) and calls every one: `dataset_convert`
turns a CSV the script writes under DIR into a new Parquet file (so DIR may start empty), and
`dataset_schema`, `dataset_sample`, `dataset_fingerprint` and `dataset_verify` then read that
file; their `structuredContent` is checked against the CSV. Paths outside the root and an
overwrite are refused with `isError: true`. Resources (`mlinfra://datasets/{+path}`), the
`explore_dataset` prompt and completion of its `path` argument are exercised where the server
advertises the capability, and skipped with a printed line where it does not.

One line per check; the last line is a JSON summary
`{"stdio": {...}, "http_2025": {...}, "http_2026": {...}, "tools_called": [...]}`. The first
failed check ends the run with `FAILED: ...` on stderr and exit status 1. The venv comes from
`scripts/mcp-python-venv`.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import (
    CallToolResult,
    EmbeddedResource,
    Prompt,
    PromptReference,
    Resource,
    ResourceTemplate,
    ResourceTemplateReference,
    TextContent,
    TextResourceContents,
    Tool,
)

HANDSHAKE_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"
SERVER_NAME = "mlinfra-agent"
TOOLS = (
    "dataset_schema",
    "dataset_sample",
    "dataset_fingerprint",
    "dataset_stats",
    "dataset_verify",
    "dataset_convert",
    "loader_plan",
    "loader_probe",
    "train_start",
    "train_status",
    "train_stop",
    "train_resume",
    "train_list",
    "wasm_run",
    "train_wait",
    "checkpoint_inspect",
    "job_delete",
    "lineage_list",
)
# Called when the server has a model (`--model FILE.gguf`).
SERVING_TOOLS = ("generate", "chat", "engine_metrics", "adapter_load", "adapter_unload")
DATASET_URI_PREFIX = "mlinfra://datasets/"
DATASET_URI_TEMPLATE = "mlinfra://datasets/{+path}"
PROMPT = "explore_dataset"

# WebAssembly guests for wasm_run: one copies its input to its output and exits with 7, one
# never ends (the sandbox's fuel stops it).
WASM_ECHO = """(module
  (import "mlinfra" "input_read" (func $in (param i32 i32) (result i32)))
  (import "mlinfra" "output_write" (func $out (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (drop (call $out (i32.const 0) (call $in (i32.const 0) (i32.const 4096))))
    (i32.const 7)))"""
WASM_SPIN = """(module (memory (export "memory") 1)
  (func (export "run") (loop $forever (br $forever))))"""

# The fixture: the CSV the script writes under the data root, and what it should read back as.
FIXTURE_CSV = "mcp_client.csv"
FIXTURE_TEXT = "id,score,label\n1,0.5,cat\n2,1.25,dog\n3,2.0,cat\n4,3.5,bird\n"
FIXTURE_ROWS: list[dict[str, Any]] = [
    {"id": 1, "score": 0.5, "label": "cat"},
    {"id": 2, "score": 1.25, "label": "dog"},
    {"id": 3, "score": 2.0, "label": "cat"},
    {"id": 4, "score": 3.5, "label": "bird"},
]
FIXTURE_COLUMNS = ["id", "score", "label"]
SAMPLE_ROWS = 2
# A well-formed fingerprint no dataset has.
WRONG_FINGERPRINT = "blake3:" + "0" * 64

ENDPOINT_LINE = re.compile(r"MCP endpoint (http://\S+)")


class CheckFailed(Exception):
    """A check on what the server answered did not hold."""


@dataclass
class Run:
    """One connection to the server: its label, what it called, and what it found."""

    label: str
    client: Client
    sandbox: bool = False
    tools_called: set[str] = field(default_factory=set)
    summary: dict[str, Any] = field(default_factory=dict)

    def check(self, condition: bool, what: str) -> None:
        """Prints `what` when `condition` holds; raises `CheckFailed` naming it otherwise."""
        if not condition:
            raise CheckFailed(f"[{self.label}] {what}")
        print(f"[{self.label}] ok: {what}", flush=True)

    def skip(self, what: str) -> None:
        print(f"[{self.label}] skip: {what}", flush=True)

    async def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        """Calls tool `name` (the SDK validates a successful result against its output schema)."""
        result = await self.client.call_tool(name, arguments)
        self.tools_called.add(name)
        return result

    async def call_ok(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Calls tool `name`, requires success, and returns its `structuredContent`."""
        result = await self.call(name, arguments)
        self.check(
            not result.is_error and isinstance(result.structured_content, dict),
            f"{name} {json.dumps(arguments)} succeeds with structuredContent"
            + ("" if not result.is_error else f" (error: {error_text(result)})"),
        )
        return result.structured_content

    async def call_refused(self, name: str, arguments: dict[str, Any], why: str) -> None:
        """Calls tool `name` and requires a tool error (`isError: true`), not a protocol error."""
        result = await self.call(name, arguments)
        self.check(
            result.is_error is True,
            f"{name} {json.dumps(arguments)} is refused with isError ({why}): "
            f"{error_text(result)!r}",
        )


def error_text(result: CallToolResult) -> str:
    """The text content of a tool result, joined."""
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


async def exercise(run: Run, expected_version: str, output: str) -> dict[str, Any]:
    """Every check over one connection; `output` is the new Parquet file this run converts to."""
    client = run.client
    run.check(
        client.protocol_version == expected_version,
        f"negotiated protocol {client.protocol_version} (expected {expected_version})",
    )
    if expected_version == STATELESS_VERSION:
        run.check(
            client.session.discover_result is not None
            and client.session.initialize_result is None,
            "negotiated through server/discover, with no initialize handshake",
        )
    else:
        run.check(
            client.session.initialize_result is not None,
            "negotiated through the initialize handshake",
        )
    info = client.server_info
    if info is not None:
        run.check(info.name == SERVER_NAME, f"server identifies as {info.name} {info.version}")
    else:
        run.skip("server sent no serverInfo (optional on 2026-07-28)")
    capabilities = client.server_capabilities
    run.summary["protocol_version"] = client.protocol_version

    # --- tools: listed, then each called -------------------------------------------------------
    tools = await list_tools(client)
    names = [tool.name for tool in tools]
    run.check(set(TOOLS) <= set(names), f"tools/list names every tool: {names}")
    for tool in tools:
        if tool.name in TOOLS:
            run.check(
                tool.output_schema is not None and tool.input_schema.get("type") == "object",
                f"{tool.name} has an object input schema and an output schema",
            )
    run.summary["tools"] = names

    converted = await run.call_ok("dataset_convert", {"input": FIXTURE_CSV, "output": output})
    run.check(
        converted["output"] == output
        and converted["rows"] == len(FIXTURE_ROWS)
        and column_names(converted) == FIXTURE_COLUMNS,
        f"dataset_convert wrote {converted['rows']} rows, columns {column_names(converted)}",
    )

    schema = await run.call_ok("dataset_schema", {"path": output})
    types = {column["name"]: column["data_type"] for column in schema["columns"]}
    run.check(
        schema["rows"] == len(FIXTURE_ROWS)
        and schema["files"] == 1
        and schema["row_groups"] >= 1
        and column_names(schema) == FIXTURE_COLUMNS,
        f"dataset_schema: {schema['rows']} rows in {schema['files']} file, columns {types}",
    )
    run.check(
        types == {"id": "Int64", "score": "Float64", "label": "Utf8"},
        "the CSV's types were inferred as Int64, Float64, Utf8",
    )

    sample = await run.call_ok("dataset_sample", {"path": output, "rows": SAMPLE_ROWS})
    run.check(
        sample["rows"] == FIXTURE_ROWS[:SAMPLE_ROWS] and sample["total_rows"] == len(FIXTURE_ROWS),
        f"dataset_sample returns the first {SAMPLE_ROWS} rows of {sample['total_rows']}: "
        f"{sample['rows']}",
    )

    stats = await run.call_ok("dataset_stats", {"path": output})
    scores = [row["score"] for row in FIXTURE_ROWS]
    mean = sum(scores) / len(scores)
    std = (sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) ** 0.5
    by_name = {column["name"]: column for column in stats["columns"]}
    run.check(
        stats["rows"] == len(FIXTURE_ROWS)
        and abs(by_name["score"]["mean"] - mean) < 1e-12
        and abs(by_name["score"]["std"] - std) < 1e-12
        and by_name["id"]["min"] == 1
        and by_name["label"]["max_length"] == 4,
        f"dataset_stats: score mean {by_name['score']['mean']}, std {by_name['score']['std']}",
    )

    printed = await run.call_ok("dataset_fingerprint", {"path": output})
    fingerprint = printed["fingerprint"]
    run.check(
        fingerprint.startswith("blake3:") and printed["rows"] == len(FIXTURE_ROWS),
        f"dataset_fingerprint: {fingerprint}",
    )

    verified = await run.call_ok("dataset_verify", {"path": output, "fingerprint": fingerprint})
    run.check(
        verified["matches"] is True and verified["fingerprint"] == fingerprint,
        "dataset_verify matches the fingerprint just taken",
    )
    differs = await run.call_ok(
        "dataset_verify", {"path": output, "fingerprint": WRONG_FINGERPRINT}
    )
    run.check(
        differs["matches"] is False and differs["fingerprint"] == fingerprint,
        "dataset_verify does not match another fingerprint, and reports the actual one",
    )

    await run.call_refused("dataset_schema", {"path": "../x.parquet"}, "outside the data root")
    await run.call_refused(
        "dataset_convert", {"input": FIXTURE_CSV, "output": output}, "never overwrites"
    )
    run.summary.update(rows=schema["rows"], fingerprint=fingerprint)

    # --- sandbox: a command that reads the data root, where the server runs commands ----------
    if run.sandbox:
        listed = await run.call_ok("sandbox_run", {"command": ["ls", "."]})
        run.check(listed["exit_code"] == 0, f"sandbox_run runs a command: {listed['stdout']!r}")
        escaped = await run.call_ok("sandbox_run", {"command": ["cat", "/etc/passwd"]})
        run.check(
            escaped["exit_code"] != 0 and "Permission denied" in escaped["stderr"],
            "sandbox_run keeps the command away from /etc/passwd",
        )
    else:
        await run.call_refused("sandbox_run", {"command": ["ls"]}, "the server runs no commands")

    # --- wasm: a guest that echoes its input, and one that loops until its fuel runs out -------
    echo = await run.call_ok("wasm_run", {"wat": WASM_ECHO, "input": "echo me"})
    run.check(
        echo["outcome"] == "exited" and echo["output"] == "echo me" and echo["exit_code"] == 7,
        f"wasm_run runs a guest: {echo}",
    )
    spin = await run.call_ok("wasm_run", {"wat": WASM_SPIN})
    run.check(spin["outcome"] == "out_of_fuel", f"wasm_run stops a guest in a loop: {spin}")

    # --- lineage: every tool recorded by definition hash, the converted dataset among them ------
    registry = await run.call_ok("lineage_list", {})
    recorded = {(entry["kind"], entry["name"]) for entry in registry["entries"]}
    run.check(
        {("tool", name) for name in names} <= recorded,
        f"lineage_list records every listed tool ({len(registry['entries'])} entries)",
    )

    # --- loader: the epoch's plan and a throughput probe over the converted file --------------
    plan = await run.call_ok("loader_plan", {"path": output, "batch": 2, "world": 2, "batches": 1})
    run.check(
        [rank["samples"] for rank in plan["ranks"]] == [2, 2]
        and sorted(plan["ranks"][0]["first_batches"][0] + plan["ranks"][1]["first_batches"][0])
        == [0, 1, 2, 3],
        f"loader_plan splits the 4 rows over 2 ranks: {plan['ranks']}",
    )
    probe = await run.call_ok("loader_probe", {"path": output, "batch": 2, "seconds": 5})
    run.check(
        probe["samples"] == len(FIXTURE_ROWS) and probe["epoch_done"] is True,
        f"loader_probe reads the epoch: {probe['samples']} samples, {probe['samples_per_s']:.0f}/s",
    )

    # --- training jobs: the wire contract and its refusals (a whole run, killed and resumed,
    # is examples/tests/it/mcp_server.rs's test; the CSV has no feature-vector column) ------------
    jobs = await run.call_ok("train_list", {})
    run.check(isinstance(jobs.get("jobs"), list), f"train_list lists {len(jobs['jobs'])} jobs")
    config = {"task": "classifier", "train": output, "features": "score", "classes": 2}
    refused = await run.call("train_start", {"config": config})
    run.check(
        refused.is_error is True and "score" in error_text(refused),
        f"train_start refuses a scalar features column, naming it: {error_text(refused)!r}",
    )
    for tool in (
        "train_status",
        "train_stop",
        "train_resume",
        "train_wait",
        "job_delete",
        "checkpoint_inspect",
    ):
        await run.call_refused(tool, {"job": "train-0-0"}, "no such job")
    await run.call_refused("train_status", {"job": "../../etc"}, "an id that is a path")

    # --- serving: where the server has a model ---------------------------------------------------
    if "generate" in names:
        generation = await run.call_ok(
            "generate", {"prompt": "The capital of France is", "max_tokens": 4}
        )
        run.check(
            generation["completion_tokens"] == 4 and generation["prompt_tokens"] > 0,
            f"generate: {generation['text']!r} ({generation['prompt_tokens']} prompt tokens)",
        )
        answer = await run.call_ok(
            "chat", {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 12}
        )
        run.check("4" in answer["text"], f"chat answers 2+2: {answer['text']!r}")
        metrics = await run.call_ok("engine_metrics", {})
        run.check(
            metrics["samples"].get("mlinfra_generation_tokens_total", 0) >= 16,
            "engine_metrics counts the tokens generated so far",
        )
        await run.call_refused(
            "adapter_load", {"name": "a", "path": "../adapter"}, "outside the data root"
        )
        await run.call_refused("adapter_unload", {"name": "never-loaded"}, "not loaded")
        run.summary["generated"] = generation["text"]
    else:
        run.skip("serving: the server has no model")

    # --- resources, prompts, completion: where advertised --------------------------------------
    if capabilities.resources is not None:
        run.summary["resources"] = await exercise_resources(run, output)
    else:
        run.skip("resources: the server does not advertise the capability")
        run.summary["resources"] = "not advertised"
    if capabilities.prompts is not None:
        run.summary["prompts"] = await exercise_prompts(run, output)
    else:
        run.skip("prompts: the server does not advertise the capability")
        run.summary["prompts"] = "not advertised"
    if capabilities.completions is not None:
        run.summary["completions"] = await exercise_completions(run, output)
    else:
        run.skip("completion: the server does not advertise the capability")
        run.summary["completions"] = "not advertised"
    return run.summary


async def exercise_resources(run: Run, output: str) -> int:
    """Lists the datasets as resources and reads `output`'s; returns how many were listed."""
    client = run.client
    uri = DATASET_URI_PREFIX + output
    resources = await list_resources(client)
    uris = [resource.uri for resource in resources]
    run.check(uri in uris, f"resources/list names {uri} ({len(uris)} resources)")
    templates = await list_resource_templates(client)
    run.check(
        DATASET_URI_TEMPLATE in [template.uri_template for template in templates],
        f"resources/templates/list names {DATASET_URI_TEMPLATE}",
    )
    read = await client.read_resource(uri)
    contents = read.contents
    run.check(
        len(contents) == 1 and isinstance(contents[0], TextResourceContents),
        f"resources/read {uri} returns one text content",
    )
    report = json.loads(contents[0].text)
    run.check(
        contents[0].mime_type == "application/json"
        and report["rows"] == len(FIXTURE_ROWS)
        and column_names(report) == FIXTURE_COLUMNS,
        f"the resource is the dataset's schema as JSON: {report['rows']} rows",
    )
    return len(uris)


async def exercise_prompts(run: Run, output: str) -> list[str]:
    """Lists the prompts and gets `explore_dataset` for `output`; returns the prompts' names."""
    client = run.client
    prompts = await list_prompts(client)
    names = [prompt.name for prompt in prompts]
    explore = next((prompt for prompt in prompts if prompt.name == PROMPT), None)
    run.check(explore is not None, f"prompts/list names {PROMPT}: {names}")
    arguments = {argument.name: argument.required for argument in explore.arguments or []}
    run.check(arguments == {"path": True}, f"{PROMPT} takes one required argument, path")
    got = await client.get_prompt(PROMPT, {"path": output})
    messages = got.messages
    run.check(len(messages) >= 2, f"prompts/get {PROMPT} returns {len(messages)} messages")
    embedded = messages[0].content
    run.check(
        isinstance(embedded, EmbeddedResource)
        and embedded.resource.uri == DATASET_URI_PREFIX + output
        and isinstance(embedded.resource, TextResourceContents)
        and json.loads(embedded.resource.text)["rows"] == len(FIXTURE_ROWS),
        "the first message embeds the dataset's schema resource",
    )
    run.check(
        any(isinstance(m.content, TextContent) and output in m.content.text for m in messages),
        "a text message names the dataset",
    )
    await expect_protocol_error(run, client.get_prompt(PROMPT, {}), f"{PROMPT} without a path")
    return names


async def exercise_completions(run: Run, output: str) -> list[str]:
    """Completes the `path` argument of the prompt and of the resource template."""
    client = run.client
    typed = output[: len(output) // 2]
    by_prompt = await client.complete(
        PromptReference(name=PROMPT), {"name": "path", "value": typed}
    )
    values = by_prompt.completion.values
    run.check(output in values, f"completion of {PROMPT}'s path {typed!r} offers {values}")
    run.check(
        all(value.startswith(typed) for value in values),
        "every completion starts with what was typed",
    )
    by_template = await client.complete(
        ResourceTemplateReference(uri=DATASET_URI_TEMPLATE), {"name": "path", "value": typed}
    )
    run.check(
        output in by_template.completion.values,
        f"completion of {DATASET_URI_TEMPLATE}'s path offers {output}",
    )
    nothing = await client.complete(
        PromptReference(name=PROMPT), {"name": "path", "value": "no-such-prefix/"}
    )
    run.check(nothing.completion.values == [], "an unknown prefix completes to nothing")
    return values


async def expect_protocol_error(run: Run, request: Awaitable[object], what: str) -> None:
    """Awaits `request` and requires a JSON-RPC error (which the SDK raises as `MCPError`)."""
    try:
        await request
    except MCPError as error:
        message: str | None = error.error.message
    else:
        message = None
    run.check(message is not None, f"{what} is a protocol error: {message}")


# --- listings, following nextCursor -------------------------------------------------------------
MAX_PAGES = 100


async def list_tools(client: Client) -> list[Tool]:
    items: list[Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        items += page.tools
        if (cursor := page.next_cursor) is None:
            return items
    raise CheckFailed(f"tools/list did not end within {MAX_PAGES} pages")


async def list_resources(client: Client) -> list[Resource]:
    items: list[Resource] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_resources(cursor=cursor)
        items += page.resources
        if (cursor := page.next_cursor) is None:
            return items
    raise CheckFailed(f"resources/list did not end within {MAX_PAGES} pages")


async def list_resource_templates(client: Client) -> list[ResourceTemplate]:
    items: list[ResourceTemplate] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_resource_templates(cursor=cursor)
        items += page.resource_templates
        if (cursor := page.next_cursor) is None:
            return items
    raise CheckFailed(f"resources/templates/list did not end within {MAX_PAGES} pages")


async def list_prompts(client: Client) -> list[Prompt]:
    items: list[Prompt] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_prompts(cursor=cursor)
        items += page.prompts
        if (cursor := page.next_cursor) is None:
            return items
    raise CheckFailed(f"prompts/list did not end within {MAX_PAGES} pages")


def column_names(report: dict[str, Any]) -> list[str]:
    return [column["name"] for column in report["columns"]]


# --- the server processes ---------------------------------------------------------------------


@contextmanager
def http_server(
    binary: Path, data_root: Path, extra: list[str], timeout: float
) -> Iterator[str]:
    """Starts `binary --http 127.0.0.1:0`, yields its endpoint URL, and stops it with SIGINT
    (its graceful shutdown), requiring exit status 0. Its stderr is copied to ours."""
    process = subprocess.Popen(
        [str(binary), "--http", "127.0.0.1:0", "--data-root", str(data_root), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    endpoints: queue.Queue[str | None] = queue.Queue()

    def copy_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            if match := ENDPOINT_LINE.search(line):
                endpoints.put(match.group(1))
        endpoints.put(None)  # stderr closed: the server exited

    copier = threading.Thread(target=copy_stderr, daemon=True)
    copier.start()
    try:
        try:
            url = endpoints.get(timeout=timeout)
        except queue.Empty:
            url = None
        if url is None:
            raise CheckFailed(
                f"the HTTP server printed no `MCP endpoint` line within {timeout:.0f} s "
                f"(exit status {process.poll()})"
            )
        print(f"[http] ok: the server listens at {url}", flush=True)
        yield url
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the HTTP server did not stop within {timeout:.0f} s of SIGINT")
        if status != 0:
            raise CheckFailed(f"the HTTP server exited with status {status} on SIGINT")
        print("[http] ok: the server stopped cleanly on SIGINT", flush=True)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        copier.join(timeout=5)


async def run_client(
    label: str,
    server: StdioServerParameters | str,
    mode: str,
    version: str,
    output: str,
    timeout: float,
    sandbox: bool = False,
) -> Run:
    """Connects in `mode`, runs every check, and returns the run (its summary filled in)."""
    with anyio.fail_after(timeout):
        async with Client(server, mode=mode, read_timeout_seconds=timeout) as client:
            run = Run(label, client, sandbox)
            await exercise(run, version, output)
    return run


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    binary: Path = args.server_binary.resolve()
    root: Path = args.data_root.resolve()
    if not binary.is_file():
        raise CheckFailed(f"no server binary at {binary}")
    if not root.is_dir():
        raise CheckFailed(f"no data root directory at {root}")
    labels = ("stdio", "http_2025", "http_2026")
    outputs = {label: f"mcp_client_{label}.parquet" for label in labels}
    if taken := [name for name in outputs.values() if (root / name).exists()]:
        raise CheckFailed(f"the data root already holds {taken}: pass an empty directory")
    (root / FIXTURE_CSV).write_text(FIXTURE_TEXT)
    print(f"fixture: {root / FIXTURE_CSV} ({len(FIXTURE_ROWS)} rows)", flush=True)

    # The server's own state (jobs, lineage) in a directory of this run's, outside the root.
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="mcp_client_state_"))
    extra = ["--state-dir", str(state)]
    if args.model:
        extra += ["--model", str(args.model.resolve())]
    if args.sandbox:
        extra.append("--sandbox")
    extra.append("--wasm")
    stdio = StdioServerParameters(command=str(binary), args=["--data-root", str(root), *extra])
    runs = [
        await run_client(
            "stdio", stdio, "legacy", HANDSHAKE_VERSION, outputs["stdio"], args.timeout, args.sandbox
        )
    ]
    with http_server(binary, root, extra, args.timeout) as url:
        runs.append(
            await run_client(
                "http_2025",
                url,
                "legacy",
                HANDSHAKE_VERSION,
                outputs["http_2025"],
                args.timeout,
                args.sandbox,
            )
        )
        # mode="auto" probes server/discover and goes stateless when the server offers
        # 2026-07-28, falling back to the handshake otherwise: the check on the negotiated
        # version makes a fallback a failure.
        runs.append(
            await run_client(
                "http_2026",
                url,
                "auto",
                STATELESS_VERSION,
                outputs["http_2026"],
                args.timeout,
                args.sandbox,
            )
        )
    # The same CSV converted three times: the same data, so the same fingerprint.
    fingerprints = {run.summary["fingerprint"] for run in runs}
    if len(fingerprints) != 1:
        raise CheckFailed(f"the three conversions' fingerprints differ: {sorted(fingerprints)}")
    print("[all] ok: the three runs' Parquet files have one fingerprint", flush=True)
    summary: dict[str, Any] = {run.label: run.summary for run in runs}
    summary["tools_called"] = sorted(set().union(*(run.tools_called for run in runs)))
    expected = set(TOOLS) | (set(SERVING_TOOLS) if args.model else set())
    expected |= {"sandbox_run"}
    missing = expected - set(summary["tools_called"])
    if missing:
        raise CheckFailed(f"tools never called: {sorted(missing)}")
    return summary


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (possibly nested) exception groups, or `error` itself."""
    inner = getattr(error, "exceptions", None)
    if inner is None:
        yield error
        return
    for exception in inner:
        yield from leaves(exception)


def first_failure(error: BaseException) -> BaseException:
    """What ended the run: the first failed check, else the first error, inside any groups."""
    found = list(leaves(error)) or [error]
    return next((e for e in found if isinstance(e, CheckFailed)), found[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-binary", type=Path, required=True, help="the mcp_server example")
    parser.add_argument(
        "--data-root", type=Path, required=True, help="an empty directory for the fixture"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per connection (default 120)"
    )
    parser.add_argument(
        "--model", type=Path, help="a GGUF model for the server: the serving tools are called too"
    )
    parser.add_argument(
        "--state-dir", type=Path, help="the server's state directory (default: a new temporary one)"
    )
    parser.add_argument(
        "--sandbox", action="store_true", help="start the server with --sandbox: call sandbox_run"
    )
    args = parser.parse_args()
    try:
        summary = anyio.run(main_async, args)
    except BaseException as error:  # noqa: BLE001 - reported, then the exit status says it
        failure = first_failure(error)
        if isinstance(failure, KeyboardInterrupt):
            raise
        if isinstance(failure, CheckFailed):
            print(f"FAILED: {failure}", file=sys.stderr)
        else:
            traceback.print_exception(failure)
            print(f"FAILED: {type(failure).__name__}: {failure}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
