"""`qwen-edge serve`: the runtime behind an OpenAI-compatible HTTP API (standard library only).

protocol.py: request checks and response shapes; engine.py: slots, queue and prompt cache; http.py: the
server. docs/serve.md describes the endpoints, fields and limits.
"""
