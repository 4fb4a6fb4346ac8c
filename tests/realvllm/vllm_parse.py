"""Parse command lines with vLLM's own argument parser; run with ``.venv-vllm``'s Python.

Reads a JSON object ``{"name": [argv...], ...}`` on standard input and prints one
JSON object ``{"name": result, ...}`` on standard output, where a result is either
``{"ok": true, "values": {...}}`` or ``{"ok": false, "error": "..."}``.

Each command line goes through what ``python -m vllm.entrypoints.openai.api_server``
does before it loads a model (vLLM 0.32.0):

1. ``make_arg_parser(FlexibleArgumentParser())`` and ``parse_args`` (unknown flags and
   badly typed values fail here, as they do when the server starts);
2. ``validate_parsed_serve_args`` (e.g. ``--enable-auto-tool-choice`` without a parser);
3. the tool parser's name is one vLLM has registered (what the server checks when it
   sets up, ``validate_api_server_args``);
4. ``AsyncEngineArgs.from_cli_args``: the engine's own arguments can be built.

All command lines are parsed in one process: importing vLLM takes about 20 s.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.tool_parsers import ToolParserManager
from vllm.utils.argparse_utils import FlexibleArgumentParser

# The namespace attributes the tests compare with the manifest.
FIELDS = (
    "model",
    "served_model_name",
    "host",
    "port",
    "max_model_len",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "gpu_memory_utilization",
    "dtype",
    "enable_auto_tool_choice",
    "tool_call_parser",
    "tokenizer_mode",
    "config_format",
    "load_format",
    "chat_template",
    "enforce_eager",
)


def parse(argv: list[str]) -> dict[str, Any]:
    """One command line through vLLM's parser and pre-start checks."""
    parser = make_arg_parser(FlexibleArgumentParser(prog="api_server"))
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            args = parser.parse_args(argv)
    except SystemExit as e:  # argparse reports errors by exiting (status 2)
        return {"ok": False, "error": usage.getvalue().strip() or f"exit {e.code}"}
    try:
        validate_parsed_serve_args(args)
        registered = ToolParserManager.list_registered()
        if args.tool_call_parser and args.tool_call_parser not in registered:
            raise KeyError(f"invalid tool call parser: {args.tool_call_parser}")
        AsyncEngineArgs.from_cli_args(args)
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    values = {name: _plain(getattr(args, name, None)) for name in FIELDS}
    return {"ok": True, "values": values}


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a namespace value (enums and the like become strings)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(getattr(value, "value", value))


def main() -> None:
    requests: dict[str, list[str]] = json.load(sys.stdin)
    results = {name: parse(argv) for name, argv in requests.items()}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
