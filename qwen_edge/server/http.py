"""`qwen-edge serve`: an OpenAI-compatible HTTP server on the standard library (no web framework).

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health. HTTP/1.1 with
keep-alive; a stream is server-sent events in chunked encoding. Every request: the API key (when set),
a body cap (413), JSON and field checks (400, protocol.py), one log line on stderr. A bad request never
takes the server down: each is answered with the OpenAI error body, and an unexpected failure is a 500
logged with its traceback. A client that goes away stops its generation within one token (the socket is
polled before every forward pass) and frees its slot.
"""

from __future__ import annotations

import hmac
import json
import select
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from ..errors import QwenEdgeError
from ..strict_json import dumps
from . import protocol as P
from . import tokenizer_api as T
from .engine import Busy, Closing, Engine, Gone
from .lifecycle import GracefulServer, StopSignals
from .replies import Replies



class Server(GracefulServer):
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its connection (reset, broken pipe, timeout) is ordinary: no traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout, TimeoutError)):
            return
        with self.log_lock:
            super().handle_error(request, client_address)

    def __init__(self, addr: tuple[str, int], engine: Engine, *, model_id: str, api_key: str | None,
                 max_body: int, max_tokens: int, log: Any = sys.stderr):
        self.engine, self.model_id, self.api_key = engine, model_id, api_key
        self.aliases: tuple[str, ...] = ()  # other model names requests may send ("*": any)
        self.max_body, self.max_tokens, self.log = max_body, max_tokens, log
        self.log_lock = threading.Lock()
        super().__init__(addr, Handler)


class Handler(Replies, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    timeout = 60  # a client that stops sending mid-request is dropped, not waited on forever

    def log_message(self, format: str, *args: Any) -> None:  # our own one line per request instead
        pass

    # --- connection life (lifecycle.py shuts idle connections down when the server stops) --------------
    def setup(self) -> None:
        super().setup()
        self.idle = True  # between requests on a keep-alive connection
        self.server.register(self)

    def handle_one_request(self) -> None:
        self.idle = True
        if self.server.stopping.is_set():
            self.close_connection = True
            return
        super().handle_one_request()
        self.idle = True

    def parse_request(self) -> bool:
        self.idle = False
        return super().parse_request()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's errors (bad request line, long URI, oversized headers) as JSON, not HTML."""
        self._status = code
        if self.request_version == "HTTP/0.9" or not getattr(self, "command", None):
            self.request_version = self.protocol_version  # a garbage request line still gets a status line
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        codes = {400: "bad_request", 414: "uri_too_long", 431: "headers_too_large", 501: "method_not_allowed",
                 505: "http_version_not_supported"}
        data = dumps(P.ApiError(code, f"{text} (HTTP {code})", code=codes.get(code, "bad_request")).body())
        try:
            self.send_response(code, text)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data.encode())
        except OSError:
            pass
        with self.server.log_lock:
            line = (getattr(self, "requestline", "") or "-")[:80]
            print(f"{self.client_address[0]} {line!r} {code} ({text})", file=self.server.log, flush=True)

    # --- routing -----------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle({"/v1/models": self._models, "/health": self._health,
                      "/tokenizer_info": lambda: self._json(200, T.info(self.server.engine.model))})

    def do_POST(self) -> None:
        self._handle({"/v1/chat/completions": lambda: self._generate("chat"),
                      "/v1/completions": lambda: self._generate("completion"),
                      "/tokenize": lambda: self._json(200, T.tokenize(self._body(), self.server.engine.model)),
                      "/detokenize": lambda: self._json(200, T.detokenize(self._body(), self.server.engine.model))})

    def do_PUT(self) -> None:
        self._handle({})

    do_DELETE = do_PATCH = do_PUT

    def _handle(self, routes: dict) -> None:
        self._t0, self._status, self._tokens, self._streaming = time.perf_counter(), 0, "", None
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if self.server.stopping.is_set():
                self.close_connection = True
                raise P.ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down")
            self._auth()
            fn = routes.get(path)
            if fn is None:
                known = {"/v1/models", "/health", "/v1/chat/completions", "/v1/completions", "/tokenizer_info",
                         "/tokenize", "/detokenize"}
                raise P.ApiError(405 if path in known else 404,
                                 f"{self.command} {path} is not supported" if path in known else f"no route {path}",
                                 code="method_not_allowed" if path in known else "not_found")
            fn()
        except P.ApiError as e:
            self._drain()
            self._json(e.status, e.body(), e.headers)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self._status = 499  # the client went away (even mid-stream, after a 200 was sent)
            self.close_connection = True
        except Exception:
            with self.server.log_lock:
                traceback.print_exc(file=self.server.log)
            if self._streaming:  # a 200 and some events are out: the stream still gets its end, then closes
                self._status, self.close_connection = 500, True
                self._end_with_error(P.ApiError(500, "internal error", kind="server_error"))
                return
            try:
                self._json(500, P.ApiError(500, "internal error", kind="server_error").body())
            except OSError:
                self.close_connection = True
        finally:
            self._log()

    def _auth(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        got = self.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode("utf-8", "surrogateescape"), f"Bearer {key}".encode()):
            raise P.ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                             code="invalid_api_key", kind="authentication_error",
                             headers={"WWW-Authenticate": "Bearer"})

    # --- endpoints ---------------------------------------------------------------------------------------
    def _models(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": self.server.model_id, "object": "model",
                                                     "created": 0, "owned_by": "qwen-edge"}]})

    def _health(self) -> None:
        self._json(200, {"status": "ok", "model": self.server.model_id, **self.server.engine.stats()})

    def _job(self, req: P.Request, kind: str, prompt: Any) -> dict[str, Any]:
        """One prompt's generation, checked before the request takes a slot: its ids, token budget, sampling
        parameters and constraint (compiled and probed: constrained.py)."""
        from ..runtimes.context import ContextLengthError, check_context
        from ..runtimes.tools import policy
        model = self.server.engine.model
        where = "messages" if kind == "chat" else "prompt"
        try:  # the Python API's rule for tools (runtimes/tools.py), named for HTTP
            tools, call_grammar = policy(req.tools, req.tool_choice, req.parallel_tool_calls,
                                         req.constraint is not None, "response_format")
        except QwenEdgeError as e:
            raise P.ApiError(400, str(e), "tool_choice") from None
        try:
            ids = model.prompt_ids(prompt, tools)
        except QwenEdgeError as e:
            raise P.ApiError(400, str(e), where) from None
        try:
            check_context(len(ids), model.max_length)
        except ContextLengthError as e:
            raise P.ApiError(400, str(e), where, "context_length_exceeded") from None
        room = model.max_length - len(ids)
        try:
            params = model.sampling(**req.sampling)  # the artifact's defaults, then the request's values
        except QwenEdgeError as e:
            raise P.ApiError(400, str(e)) from None
        spec = req.constraint
        if call_grammar is not None:  # "required" or a named function: only valid calls can be written
            from ..runtimes.constrained import ConstraintSpec
            spec = ConstraintSpec("grammar", call_grammar)
        constraint = None
        if spec is not None:
            try:
                constraint = model.constraint(spec=spec)
            except QwenEdgeError as e:
                raise P.ApiError(400, str(e), "response_format" if spec is req.constraint else "tools") from None
        return {"prompt": prompt, "ids": ids, "max_new": min(req.max_tokens or self.server.max_tokens, room),
                "params": params, "constraint": constraint}

    def _generate(self, kind: str) -> None:
        body = self._body()
        req = P.parse(body, kind, self.server.model_id, self.server.max_tokens, self.server.aliases)
        prompts = req.prompt if kind == "completion" else [req.prompt]
        if req.stream and len(prompts) > 1:
            raise P.ApiError(400, "a streamed completion takes one prompt; send several prompts without 'stream'",
                             "prompt")
        jobs = [self._job(req, kind, p) for p in prompts]  # every prompt checked before a slot is taken
        eng = self.server.engine
        try:
            eng.admit(self._gone)
        except Busy:
            raise P.ApiError(503, "the server is busy: every generation slot and the queue are taken; retry later",
                             kind="server_error", code="server_busy", headers={"Retry-After": "1"}) from None
        except Gone:
            self._status = 499
            self.close_connection = True
            return
        except Closing:
            self.close_connection = True
            raise P.ApiError(503, "the server is shutting down", kind="server_error", code="shutting_down") from None
        try:
            if req.stream:
                self._run(req, kind, jobs[0], self._send_stream)
                return
            replies = []
            for job in jobs:  # one after another in this slot; the prompt cache shares their common prefix
                reply = self._run(req, kind, job, self._whole)
                if reply is None:  # the client left
                    return
                replies.append(reply)
            self._json(200, P.merge_choices(replies))
        finally:
            eng.release()

    def _run(self, req: P.Request, kind: str, job: dict[str, Any], send: Any) -> Any:
        """One generation: the prompt's log-probabilities when echoing them, then `send(req, kind, job, stream)`."""
        eng, model, cut = self.server.engine, self.server.engine.model, self.server.cut
        ids, stream = job["ids"], None
        try:
            job["echo_lp"] = []
            if req.echo and req.logprobs is not None:  # the prompt's own log-probabilities (evaluation harnesses)
                job["echo_lp"] = [("first", ids[0])] + model.prompt_logprobs(ids, req.logprobs)[1:]
            stream = eng.generate(ids, max_new_tokens=job["max_new"], params=job["params"], stop=req.stop,
                                  cancel=lambda: cut.is_set() or self._gone(), constraint=job["constraint"],
                                  top_logprobs=req.logprobs)
            with stream:
                try:
                    return send(req, kind, job, stream)
                except QwenEdgeError as e:  # the constraint's parser stopped mid-generation (constrained.py)
                    error = P.ApiError(400, str(e), "response_format" if req.tools is None else "tools",
                                       "constraint_failed")
                    if not self._streaming:
                        raise error from None
                    self._status, self.close_connection = 400, True
                    self._end_with_error(error)
        finally:
            if stream is not None:  # the log line's token counts, however the stream ended
                self._usage(stream.result)

    # --- I/O -----------------------------------------------------------------------------------------
    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise P.ApiError(411, "send the body with a Content-Length (chunked request bodies are not supported)",
                             code="length_required")
        if length is None:
            self.close_connection = True
            raise P.ApiError(411, "a POST needs a Content-Length header", code="length_required")
        n = int(length) if length.strip().isdigit() else -1
        if n < 0:  # the body's end is unknown: this connection cannot carry another request
            self.close_connection, self._read = True, True
            raise P.ApiError(400, f"invalid Content-Length {length[:40]!r}: a non-negative integer is required")
        if n > self.server.max_body:
            # Clients such as http.client and openai send the whole body before reading a reply: discard a
            # moderately large one so they see the 413 rather than a broken pipe; beyond 64 MiB, just close.
            self.close_connection = True
            if n <= 64 << 20:
                self._discard(n)
            self._read = True
            raise P.ApiError(413, f"the request body is {n} bytes; this server takes at most {self.server.max_body}",
                             code="request_too_large")
        raw = self.rfile.read(n) if n else b""
        self._read = True
        if len(raw) < n:
            self.close_connection = True
            raise P.ApiError(400, f"the request body ended after {len(raw)} of its {n} bytes")
        depth = P.json_depth(raw)
        if depth > P.MAX_JSON_DEPTH:  # on the raw bytes: a 100,000-deep array never reaches the parser
            raise P.ApiError(400, f"the request body nests {depth} levels deep; at most {P.MAX_JSON_DEPTH} are accepted")
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise P.ApiError(400, "the request body is not UTF-8") from None
        except RecursionError:  # the depth check counts brackets outside strings; belt and braces
            raise P.ApiError(400, "the request body nests too deeply") from None
        except json.JSONDecodeError as e:
            raise P.ApiError(400, f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") \
                from None

    def _drain(self) -> None:
        """Read an unread body so the connection can carry the next request (small bodies only)."""
        if getattr(self, "_read", False) or self.close_connection:
            return
        length = (self.headers.get("Content-Length") or "0").strip()
        n = int(length) if length.isdigit() else 0
        if not length.isdigit():
            self.close_connection = True
        if 0 < n <= self.server.max_body:
            self._discard(n)
        elif n:
            self.close_connection = True

    def _discard(self, n: int) -> None:
        """Read and drop n body bytes in small pieces (never the whole body in memory)."""
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                return
            n -= len(chunk)

    def _gone(self) -> bool:
        """True once the client has closed its side (polled between tokens: cheap, no blocking)."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if not r:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = dumps(obj, ensure_ascii=False).encode("utf-8")
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.server.stopping.is_set():
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _event(self, obj: Any) -> None:
        self._chunk(b"data: " + dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _log(self) -> None:
        ms = (time.perf_counter() - self._t0) * 1e3
        with self.server.log_lock:
            print(f"{self.client_address[0]} {self.command} {self.path} {self._status}{self._tokens} {ms:.0f} ms",
                  file=self.server.log, flush=True)


def serve(folder: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          parallel: int = 1, queue: int = 16, cache: int = 4, threads: int = 0, ctx: int | None = None,
          max_tokens: int = 2048, max_body: int = 1 << 20, model_id: str | None = None, verify: bool = True,
          shutdown_timeout: float = 5.0, ready: Any = None, stop: StopSignals | None = None, draft: Any = None,
          draft_tokens: int = 8, lookup: int | None = None, aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load the model and serve until SIGTERM, SIGHUP or SIGINT (or `stop.first` is set), then stop
    gracefully (lifecycle.py): running generations get `shutdown_timeout` seconds to finish, then end
    with finish_reason "length"; a second signal cuts them at once. Returns what the drain did.
    `ready(url, model_id)` is called once the socket listens."""
    from pathlib import Path

    from ..errors import InputError
    from ..runtimes.model import Model
    for name, v, lo in (("--parallel", parallel, 1), ("--queue", queue, 0), ("--cache", cache, 0),
                        ("--max-tokens", max_tokens, 1), ("--max-body", max_body, 1024)):
        if v < lo:
            raise InputError(f"{name} must be at least {lo}, got {v}")
    if not 0 <= shutdown_timeout <= 3600:
        raise InputError(f"--shutdown-timeout must be within 0..3600 seconds, got {shutdown_timeout}")
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is outside 0..65535")
    if ctx is None:  # the export's context can be 32k: a server holds up to (parallel + cache) of these
        from .. import artifact as A
        manifest = A.read_manifest(folder)
        A.check_model(folder, manifest)  # max_length is trusted only once it matches the graph
        ctx = min(manifest["max_length"], 8192)
    model = Model.load(folder, threads=threads, max_length=ctx, verify=verify, draft=draft,
                       draft_tokens=draft_tokens, lookup=lookup)
    mid = model_id or Path(folder).resolve().name
    try:
        server = Server((host, port), Engine(model, parallel, queue, cache), model_id=mid, api_key=api_key,
                        max_body=max_body, max_tokens=max_tokens)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.aliases = tuple(aliases)
    h, p = server.server_address[:2]
    url = f"http://{h if ':' not in str(h) else f'[{h}]'}:{p}"
    signals = stop or StopSignals()
    # The accept loop runs in a thread of its own, so the main thread is free to wait for a signal and
    # then drain: a signal handler never runs inside serve_forever or a handler.
    # A daemon: it never calls onnxruntime, and it must not keep the process alive if the stop goes wrong.
    accept = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="qwen-edge-accept",
                              daemon=True)
    accept.start()
    try:
        if ready is not None:
            ready(url, mid)
        signals.wait()
    finally:
        try:  # best effort: a parent that went away leaves a broken stderr, and the drain must still run
            with server.log_lock:  # in order with the request lines
                print("qwen-edge serve: stopping (finishing running requests; a second signal cuts them)",
                      file=server.log, flush=True)
        except (OSError, ValueError):
            pass
        done = server.drain(shutdown_timeout, signals.second, on_cut=server.engine.close)
        accept.join()
        server.server_close()
        signals.restore()
    return done
