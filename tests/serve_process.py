"""A real `qwen-edge serve` process on 127.0.0.1 for tests: started on a free port, its log collected."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path


def default_sigint() -> None:
    """For a child's preexec_fn: SIGINT back to its default. A POSIX shell starts background jobs with SIGINT
    ignored and children inherit that; a test that sends SIGINT must not depend on how the suite was run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerProcess:
    def __init__(self, folder: Path, *args: str):
        self.p = subprocess.Popen([sys.executable, "-m", "qwen_edge.cli", "serve", str(folder), "--port", "0",
                                   "--json", "--threads", "1", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(self.p.stderr.read())
        info = json.loads(line)
        self.url, self.model = info["url"], info["model"]
        self.host, self.port = self.url.split("//")[1].rsplit(":", 1)
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.p.stderr), daemon=True).start()

    def client(self, key: str = "none", **kw):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        c = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
        c.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, (strict_json(data) if data else None), dict(r.getheaders())

    def rss_mib(self) -> float:
        with open(f"/proc/{self.p.pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024

    def stop(self) -> int:
        self.p.terminate()
        return self.p.wait(timeout=30)


def strict_json(data: bytes | str):
    """Parse as JavaScript's JSON.parse (and Go's, Rust's) would: NaN, Infinity and -Infinity are errors."""
    def refuse(name: str):
        raise ValueError(f"not JSON: {name} (a strict parser rejects the whole document)")
    return json.loads(data, parse_constant=refuse)


def sse_events(body: bytes) -> list:
    """The `data:` events of a server-sent-events body, each parsed strictly ("[DONE]" kept as the string)."""
    out = []
    for line in body.decode("utf-8").split("\n"):
        if line.startswith("data: "):
            d = line[len("data: "):]
            out.append(d if d == "[DONE]" else strict_json(d))
    return out


def raw_exchange(host: str, port: int, data: bytes, *, half_close: bool = False, timeout: float = 30) -> bytes:
    """Send bytes as they are (what no client library would send) and read until the server closes."""
    import socket
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(1 << 16):
            out += chunk
    return out


def parse_reply(raw: bytes) -> tuple[int, dict, bytes]:
    """(status, headers in lower case, body) of one HTTP/1.1 reply."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body
