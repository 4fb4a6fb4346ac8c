"""The served model as Elasticsearch and Kibana reach it: Nginx (TLS, bearer token) in
front of vLLM's OpenAI-compatible ``/v1/chat/completions``, in one small HTTPS server.

For the contract tests that need the model without a container engine; the integration
tests and the demo use the real Nginx and ``devkit/vllm_stub.py`` instead. As there:

* a request without ``Authorization: Bearer <token>`` gets Nginx's 401 page (HTML);
* ``model`` must be the served name (vLLM answers 404 otherwise);
* ``stream: true`` answers Server-Sent Events, one ``chat.completion.chunk`` per word,
  then ``data: [DONE]`` (and a usage chunk when ``stream_options.include_usage``);
  otherwise one ``chat.completion`` with ``choices`` and ``usage``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

from devkit.standins._http import JsonServer, Request, Response

WORDS = ["Hello", " from", " the", " air-gapped", " model", "."]
NGINX_401 = (
    b"<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
    b"<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class ModelStandIn(JsonServer):
    def __init__(
        self, cert: Path, key: Path, token: str, model: str = "tiny", host: str = "127.0.0.1"
    ) -> None:
        super().__init__(tls=server_context(cert, key), host=host)
        self.token = token
        self.model = model
        self.words = list(WORDS)  # what it answers (a test may make it answer nothing)
        self.requests: list[dict[str, object]] = []  # every chat request body, in order
        self.route("GET", r"/health", lambda req: Response(200, {}))
        self.route("POST", r"/v1/chat/completions", self._chat)

    def check_auth(self, req: Request) -> Response | None:
        if req.path == "/health" or req.headers.get("authorization") == f"Bearer {self.token}":
            return None
        return Response(401, raw=NGINX_401, headers={"Content-Type": "text/html"})

    @property
    def chat_url(self) -> str:
        return f"{self.url}/v1/chat/completions"

    def _chat(self, req: Request) -> Response:
        body = req.json() or {}
        self.requests.append(body)
        if body.get("model") != self.model:
            message = f"The model `{body.get('model')}` does not exist."
            return Response(404, {"object": "error", "message": message, "code": 404})
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return Response(
                200, headers={"Content-Type": "text/event-stream"}, stream=self._sse(usage)
            )
        return Response(
            200,
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "".join(self.words)},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
            },
        )

    def _sse(self, usage: bool) -> Iterator[bytes]:
        # vLLM's first chunk carries the role only: it is no content delta
        first = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "model": self.model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
        }
        yield f"data: {json.dumps(first)}\n\n".encode()
        for w in self.words:
            chunk = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "model": self.model,
                "choices": [{"index": 0, "delta": {"content": w}}],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        if usage:
            tail = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "model": self.model,
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
            }
            yield f"data: {json.dumps(tail)}\n\n".encode()
        yield b"data: [DONE]\n\n"
