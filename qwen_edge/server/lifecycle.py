"""How the server stops: signals caught as requests to stop, then a bounded drain that joins every thread.

Why it matters: onnxruntime's thread pool must not be running (or be destroyed) while the interpreter
exits. A daemon handler thread still inside a forward pass at exit made the process die by SIGABRT
("terminate called without an active exception") about every second SIGTERM during a stream. So the
server tracks every connection and its thread, and `drain` returns only once all of them have ended:

1. stop accepting (the listening socket closes: new connections are refused), close idle keep-alive
   connections, answer any new request on an open connection with 503;
2. let running generations finish for up to `timeout` seconds (`--shutdown-timeout`);
3. then cut them: each ends at its next token with finish_reason "length", a stream with its final chunk
   and `data: [DONE]`; requests still waiting for a slot get 503;
4. shut down the sockets of clients that still do not read, and join every thread. A thread inside
   onnxruntime finishes its current forward pass first: nothing is left running when the process exits.

A second signal skips the wait of step 2 only: the cut streams still get up to FINAL_CHUNK_WAIT_S to write
their final chunk and `[DONE]` (measured before: two SIGTERMs 0.3 s apart cut a stream with no end, logged
as 499, because the second one also skipped that wait).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

# After the cut, how long streams get to write their final chunk before their sockets are shut down.
FINAL_CHUNK_WAIT_S = 2.0


class StopSignals:
    """SIGTERM, SIGHUP and SIGINT set `first` (and a second one sets `second`) instead of raising.

    Installed only from the main thread (signal handlers can be set nowhere else); SIGINT is left alone
    when it is ignored (a background job of a POSIX shell). `restore()` puts the previous handlers back.
    """

    def __init__(self) -> None:
        self.first, self.second = threading.Event(), threading.Event()
        self._old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGTERM", "SIGHUP", "SIGINT"):
            num = getattr(signal, name, None)
            if num is None or (name == "SIGINT" and signal.getsignal(num) == signal.SIG_IGN):
                continue
            self._old[num] = signal.signal(num, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        (self.second if self.first.is_set() else self.first).set()

    def wait(self) -> None:
        """Block until the first signal (KeyboardInterrupt counts as one too)."""
        try:
            while not self.first.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.first.set()

    def restore(self) -> None:
        for num, old in self._old.items():
            signal.signal(num, old)
        self._old.clear()


class GracefulServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its connections and threads, and drains them on stop."""

    daemon_threads = False  # never left running at exit: `drain` joins them
    block_on_close = False  # we join our own set of threads, with the steps above

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stopping = threading.Event()  # set: refuse new requests, close connections after each reply
        self.cut = threading.Event()  # set: running generations end at their next token
        self._live: dict[threading.Thread, Any] = {}  # thread -> its handler (None before setup)
        self._live_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    # --- bookkeeping ---------------------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name=f"qwen-edge-http-{client_address[1] if isinstance(client_address, tuple) else ''}")
        with self._live_lock:  # known before it starts: drain never misses a thread the accept loop made
            self._live[t] = None
        t.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def register(self, handler: Any) -> None:
        """Called by the handler's setup(): its connection can be shut down on stop."""
        with self._live_lock:
            self._live[threading.current_thread()] = handler

    def threads(self) -> list[threading.Thread]:
        with self._live_lock:
            return list(self._live)

    def _shut(self, idle_only: bool) -> None:
        with self._live_lock:
            handlers = [h for h in self._live.values() if h is not None]
        for h in handlers:
            if idle_only and not getattr(h, "idle", False):
                continue
            try:
                h.connection.shutdown(socket.SHUT_RDWR)  # unblocks a read or write in that thread
            except OSError:
                pass

    # --- the stop ------------------------------------------------------------------------------------
    def drain(self, timeout: float, hurry: threading.Event, on_cut: Any = None) -> dict[str, Any]:
        """Stop as described in the module docstring; returns what it did (for the log line)."""
        t0 = time.monotonic()
        self.stopping.set()
        self.shutdown()  # the accept loop (running in another thread) ends
        self.socket.close()  # stop listening: new connections are refused by the kernel
        deadline = t0 + max(0.0, timeout)
        while self.threads() and time.monotonic() < deadline and not hurry.is_set():
            self._shut(idle_only=True)  # keep-alive connections waiting for a next request
            hurry.wait(0.05)
        busy = len(self.threads())
        if on_cut is not None:  # first, so a request waiting for a slot cannot take one a cut frees
            on_cut()
        self.cut.set()
        if busy:  # also after a second signal: a cut stream ends with its final chunk, never mid-event
            end = time.monotonic() + FINAL_CHUNK_WAIT_S
            while self.threads() and time.monotonic() < end:
                self._shut(idle_only=True)
                time.sleep(0.02)
        self._shut(idle_only=False)  # whoever is left: a client that does not read, a slow body
        for t in self.threads():
            t.join()  # inside onnxruntime: returns after its current forward pass
        return {"cut": busy, "seconds": time.monotonic() - t0}
