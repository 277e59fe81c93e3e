#!/usr/bin/env python3
"""A stand-in for the Anthropic Messages API, so the real Claude Code CLI can
run in tests (ANTHROPIC_BASE_URL=http://127.0.0.1:PORT).

Python standard library only. Started by tests/claude_e2e.rs:

    model_server.py --script SCRIPT.json --log REQUESTS.jsonl --port-file PORT

It binds 127.0.0.1 on a free port and writes the port to --port-file once it
listens. Every request is appended to --log as one JSON line
({"method", "path", "body"}), so tests can assert on what the CLI sent.

The "model" is scripted. SCRIPT.json is {"rules": [RULE, ...]}; a request is
answered by the first rule whose "match" (a Python regular expression,
searched with re.S) is found in the request's current prompt: the text of
the last user message that carries text (a tool result is not a prompt; the
CLI's <system-reminder> blocks and hook feedback count as text). The answer
is the rule's steps[k], where k is the number of assistant messages after
that prompt, so a rule can run a tool and then reply to its result. A rule
with "times": N is used for its first N matching prompts only (counted
across requests with k == 0). Past its last step, a rule answers
{"text": "Done."}.

A step is one of:
  {"text": "..."}                      a text reply, stop_reason end_turn
  {"bash": "COMMAND"}                  a tool_use of the Bash tool
  {"bash_from": "REGEX"}               Bash, running the first group of REGEX
                                       searched in the prompt (or in the
                                       whole request when not in the prompt),
                                       with "sub": [[OLD, NEW], ...] replaced
  {"error": 529, "type": "overloaded_error", "message": "..."}
                                       an HTTP error with the API's error body
  {"hang": true}                       starts a reply and never finishes it
Requests no rule matches (the CLI's own side requests) get {"text": "OK"}.
"""

import argparse
import http.server
import json
import re
import socketserver
import sys
import threading
import time
import uuid

LOCK = threading.Lock()
USES = {}


def content_text(content):
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "\n".join(parts)


def current_prompt(body):
    """(prompt text, assistant messages after it).

    The prompt is the last user message that carries text, with the text of
    any role "system" messages after it (the CLI puts context there)."""
    msgs = body.get("messages") or []
    after = 0
    extra = []
    for m in reversed(msgs):
        role = m.get("role")
        if role == "assistant":
            after += 1
            continue
        text = content_text(m.get("content"))
        if role != "user":
            extra.append(text)
            continue
        if text.strip():
            return "\n".join([text] + extra), after
    return "\n".join(extra), after


def whole_text(body):
    out = []
    system = body.get("system")
    if isinstance(system, list):
        out.append(content_text(system))
    elif isinstance(system, str):
        out.append(system)
    for m in body.get("messages") or []:
        c = m.get("content")
        if isinstance(c, list):
            for b in c:
                if isinstance(b, dict):
                    if b.get("type") == "text":
                        out.append(b.get("text", ""))
                    elif b.get("type") == "tool_result":
                        out.append(content_text(b.get("content")))
        else:
            out.append(content_text(c))
    return "\n".join(out)


def choose(script, body):
    prompt, k = current_prompt(body)
    if not body.get("tools"):
        # Side requests (titles, summaries) come without tools.
        return {"text": "OK"}, None
    for i, rule in enumerate(script.get("rules", [])):
        if not re.search(rule["match"], prompt, re.S):
            continue
        times = rule.get("times")
        with LOCK:
            used = USES.get(i, 0)
            if times is not None and k == 0 and used >= times:
                continue
            if k == 0:
                USES[i] = used + 1
        steps = rule.get("steps", [])
        if k < len(steps):
            return steps[k], (prompt, whole_text(body))
        return {"text": "Done."}, None
    return {"text": "OK"}, None


def bash_command(step, ctx):
    if "bash" in step:
        return step["bash"]
    prompt, whole = ctx
    for text in (prompt, whole):
        m = re.search(step["bash_from"], text, re.S)
        if m:
            cmd = m.group(1)
            for old, new in step.get("sub", []):
                cmd = cmd.replace(old, new)
            return cmd
    return "echo 'model_server: no command matched %s'" % step["bash_from"].replace("'", "")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def record(self, body):
        with LOCK:
            with open(self.server.log_path, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path, "body": body}) + "\n")

    def send_json(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        self.record(None)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        self.record(None)
        self.send_json(200, {"ok": True})

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"unparsable": raw.decode("utf-8", "replace")}
        self.record(body)
        path = self.path.split("?")[0]
        if path.endswith("/count_tokens"):
            self.send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if not path.endswith("/v1/messages"):
            self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
            return
        step, ctx = choose(self.server.script, body)
        if "error" in step:
            code = int(step["error"])
            self.send_json(code, {
                "type": "error",
                "error": {"type": step.get("type", "api_error"), "message": step.get("message", "scripted error")},
            }, {"x-should-retry": "false"})
            return
        if "bash" in step or "bash_from" in step:
            cmd = bash_command(step, ctx)
            blocks = [{
                "type": "tool_use",
                "id": "toolu_" + uuid.uuid4().hex[:24],
                "name": "Bash",
                "input": {"command": cmd, "description": "Report to the queue"},
            }]
            stop = "tool_use"
        else:
            blocks = [{"type": "text", "text": step.get("text", "")}]
            stop = "end_turn"
        model = body.get("model", "claude-test")
        if body.get("stream"):
            self.stream(model, blocks, stop, step.get("hang", False))
        else:
            self.send_json(200, {
                "id": "msg_" + uuid.uuid4().hex[:24],
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5},
            })

    def event(self, name, data):
        chunk = ("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode()
        self.wfile.write(("%x\r\n" % len(chunk)).encode() + chunk + b"\r\n")
        self.wfile.flush()

    def stream(self, model, blocks, stop, hang):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", "req_" + uuid.uuid4().hex)
        self.end_headers()
        self.event("message_start", {"type": "message_start", "message": {
            "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}})
        if hang:
            while True:
                time.sleep(1)
                try:
                    self.event("ping", {"type": "ping"})
                except OSError:
                    return
        for i, b in enumerate(blocks):
            if b["type"] == "text":
                self.event("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}})
                text = b["text"]
                for j in range(0, len(text), 200):
                    self.event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": text[j:j + 200]}})
            else:
                self.event("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "tool_use", "id": b["id"],
                                                                     "name": b["name"], "input": {}}})
                js = json.dumps(b["input"])
                for j in range(0, len(js), 50):
                    self.event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "input_json_delta",
                                                                 "partial_json": js[j:j + 50]}})
            self.event("content_block_stop", {"type": "content_block_stop", "index": i})
        self.event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": 5}})
        self.event("message_stop", {"type": "message_stop"})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    with open(args.script) as f:
        script = json.load(f)
    srv = Server(("127.0.0.1", 0), Handler)
    srv.script = script
    srv.log_path = args.log
    open(args.log, "a").close()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(tmp, args.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
