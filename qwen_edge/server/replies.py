"""How a finished or running generation becomes an OpenAI response: the whole reply (chat.completion /
text_completion, tool calls parsed), or a stream of server-sent events (content and tool-call deltas as they
are written, log-probabilities per chunk, the final chunk, usage, `[DONE]`), and the way a stream ends when
it cannot go on. A mixin of the request handler (http.py), which owns the socket and the routing.
"""

from __future__ import annotations

from typing import Any

from . import protocol as P


class Replies:
    server: Any

    def _finish_reason(self, r: Any) -> str | None:
        """The reason to report, or None when the client left. A generation cut by the server's stop ends
        like one that reached max_tokens ("length"): the text so far is a complete reply to send."""
        if r.finish_reason != "cancelled":
            return r.finish_reason
        if self.server.cut.is_set() and not self._gone():
            self.close_connection = True
            return "length"
        self._status, self.close_connection = 499, True
        return None

    def _whole(self, req: P.Request, kind: str, job: dict[str, Any], stream: Any) -> dict[str, Any] | None:
        """The whole reply to one prompt as a response object (None when the client left)."""
        stream.read()
        r = stream.result
        reason = self._finish_reason(r)
        if reason is None:
            return None
        use = self._usage(r)
        text, lp = r.text, self._logprobs(req, kind, r.logprobs or [], job["echo_lp"])
        if req.echo:
            p = job["prompt"]
            text = (p if isinstance(p, str) else self.server.engine.model.decode(p)) + text
        text, calls = self._calls(req, text)
        return P.response(kind, P.new_id(kind), self.server.model_id, text, reason, use, lp, calls)

    def _call_events(self, kind: str, rid: str, mid: str, events: list[tuple]) -> None:
        for e in events:
            if e[0] == "content":
                self._event(P.chunk(kind, rid, mid, e[1]))
            else:
                self._event(P.tool_call_delta(rid, mid, e))

    def _calls(self, req: P.Request, text: str) -> tuple[str | None, list]:
        """The reply's tool calls (Qwen's <tool_call> blocks, or a bare JSON call) and the rest of its text."""
        if req.tools is None or req.tool_choice == "none":
            return text, []
        from ..runtimes.tools import parse_calls
        return parse_calls(text, [t["function"]["name"] for t in req.tools])

    def _logprobs(self, req: P.Request, kind: str, entries: list, echo: list | None = None) -> dict | None:
        """The response's logprobs for these generated entries, after the prompt's (`echo`) when echoing.

        Chat leaves the end token out (its content never shows it). Completions keep every generated token,
        end tokens included, as OpenAI's legacy endpoint does: evaluation harnesses score the echoed prompt
        and drop the last entry, which must be the generated one (lm-eval lost an answer's last real token
        when an end token was left out, and scored 0.17 for 0.83)."""
        if req.logprobs is None:
            return None
        model = self.server.engine.model
        if kind == "chat":
            return P.chat_logprobs([e for e in entries if e.id not in model.stop_token_ids], model.tokenizer)
        return P.completion_logprobs((echo or []) + entries, model.tokenizer)

    def _end_with_error(self, error: P.ApiError) -> None:
        """A stream that cannot go on still ends as a stream: OpenAI's error event (the openai client raises
        it), a final chunk with finish_reason "error", `[DONE]` and the chunked terminator."""
        kind, rid, mid = self._streaming
        try:
            self._event(error.body())
            self._event(P.chunk(kind, rid, mid, None, "error"))
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        except OSError:
            self.close_connection = True

    def _send_stream(self, req: P.Request, kind: str, job: dict[str, Any], stream: Any) -> None:
        rid, mid = P.new_id(kind), self.server.model_id
        self._status, self._streaming = 200, (kind, rid, mid)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if kind == "chat":
            self._event(P.chunk(kind, rid, mid, "", first=True))
        sent = 0
        if req.echo:  # the prompt first, with its tokens' log-probabilities
            p = job["prompt"]
            prompt_text = p if isinstance(p, str) else self.server.engine.model.decode(p)
            self._event(P.chunk(kind, rid, mid, prompt_text, logprobs=self._logprobs(req, kind, [], job["echo_lp"])))
        tools_on = req.tools is not None and req.tool_choice != "none"
        calls_stream = None
        if tools_on:  # content and tool calls as they are written (runtimes/tools.py CallStream)
            from ..runtimes.tools import CallStream
            calls_stream = CallStream([t["function"]["name"] for t in req.tools])
        for piece in stream:
            if calls_stream is not None:
                self._call_events(kind, rid, mid, calls_stream.feed(piece))
                continue
            lp = None
            if req.logprobs is not None:  # the tokens drawn since the last piece
                log = stream.result.logprobs
                lp, sent = self._logprobs(req, kind, log[sent:]), len(log)
            self._event(P.chunk(kind, rid, mid, piece, logprobs=lp))
        r = stream.result
        reason = self._finish_reason(r)
        if reason is None:
            return
        if calls_stream is not None:
            self._call_events(kind, rid, mid, calls_stream.finish())
            if calls_stream.calls:
                reason = "tool_calls"
        rest = self._logprobs(req, kind, (r.logprobs or [])[sent:]) if req.logprobs is not None else None
        self._event(P.chunk(kind, rid, mid, None, reason, logprobs=rest))
        if req.include_usage:
            self._event(P.chunk(kind, rid, mid, None, use=self._usage(r)))
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _usage(self, r: Any) -> dict[str, Any]:
        t = r.timings
        prompt = t.prompt_tokens + t.cached_tokens
        self._tokens = f" prompt={prompt} cached={t.cached_tokens} completion={len(r.tokens)}"
        sp = t.speculative
        if sp is not None:
            self._tokens += (f" accepted={sp['accepted']}/{sp['proposed']} "
                             f"tokens_per_pass={sp['tokens_per_pass']:.2f}")
        return P.usage(prompt, len(r.tokens), t.cached_tokens, sp)

