"""An OpenAI-compatible stand-in for vLLM, for the demo and the tests (standard library only).

It runs inside a small image assembled offline (devkit.demo_data) and is started by the
installer exactly as the real vLLM image would be: the same command-line flags (it
refuses flags vLLM would refuse, and flag combinations vLLM refuses), the same
``VLLM_API_KEY`` check on ``/v1``, ``/health``, ``/v1/models`` and
``/v1/chat/completions`` with or without streaming (SSE). The model directory must
exist and hold a ``config.json`` or ``params.json``, as vLLM requires.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vllm-openai-stub", allow_abbrev=False)
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument("--tool-call-parser")
    p.add_argument("--tokenizer-mode", choices=["auto", "slow", "mistral", "custom"])
    p.add_argument("--config-format", choices=["auto", "hf", "mistral"])
    p.add_argument("--load-format")
    p.add_argument("--chat-template")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--hf-overrides", type=json.loads)  # JSON, as vLLM parses it
    p.add_argument("--api-key")
    p.add_argument("--stub-startup-delay", type=float, default=0.0)  # tests only
    p.add_argument("--stub-never-healthy", action="store_true")  # tests only
    args = p.parse_args(argv)
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        p.error("--enable-auto-tool-choice requires --tool-call-parser")
    if args.gpu_memory_utilization is not None and not 0 < args.gpu_memory_utilization <= 1:
        p.error("--gpu-memory-utilization must be in (0, 1]")
    return args


def main() -> None:
    args = parse(sys.argv[1:])
    if not any(os.path.isfile(os.path.join(args.model, f)) for f in ("config.json", "params.json")):
        print(f"ERROR: no config.json or params.json in {args.model}", file=sys.stderr)
        sys.exit(1)
    names = args.served_model_name or [args.model]
    key = args.api_key or os.environ.get("VLLM_API_KEY")
    started = time.monotonic()
    print(f"stub: serving {names} from {args.model} on {args.host}:{args.port}", flush=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *a: object) -> None:
            print("stub: " + fmt % a, flush=True)

        def _json(self, status: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _ready(self) -> bool:
            return not args.stub_never_healthy and (
                time.monotonic() - started >= args.stub_startup_delay
            )

        def _authorized(self) -> bool:
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                self._json(401, {"error": "Unauthorized"})
                return False
            return True

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200 if self._ready() else 503, {})
            elif self.path == "/v1/models":
                if self._authorized():
                    self._json(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {
                                    "id": n,
                                    "object": "model",
                                    "owned_by": "vllm",
                                    "max_model_len": args.max_model_len,
                                }
                                for n in names
                            ],
                        },
                    )
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": "not found"})
                return
            if not self._authorized():
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if body.get("model") not in names:
                self._json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                return
            words = ["Hello", " from", " the", " air-gapped", " model", "."]
            if body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for w in words:
                    chunk = {
                        "object": "chat.completion.chunk",
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": {"content": w}}],
                    }
                    data = f"data: {json.dumps(chunk)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    time.sleep(0.2)
                end = b"data: [DONE]\n\n"
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
                return
            self._json(
                200,
                {
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(words)},
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
                },
            )

    # As PID 1 in its container, a process gets no default SIGTERM action: stop on it,
    # like vLLM's server does, so `docker stop` does not wait out its timeout.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
