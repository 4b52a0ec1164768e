#!/usr/bin/env python3
"""An HTTP/1.1 forwarding proxy in front of a test S3 server that injects faults on demand.

    s3_fault_proxy.py --port PORT --upstream HOST:PORT      (scripts/with-s3-server.sh --faults)

Requests and responses are forwarded byte for byte (the Host header too: SigV4 signs it), one
upstream connection per request; client connections are kept alive. The plan is the JSON file
named by $SAVEPOINT_TEST_FAULT_PLAN, re-read at every request, a list of rules:

    {"method": "PUT" | "GET" | ... | "*", "key_contains": "CKPT+3/", "action": ACTION,
     "times": N (default: every matching request), "delay_ms": M (action "delay")}

ACTION: "503" / "500" (S3 XML error ServiceUnavailable / InternalError), "slowdown" (503
SlowDown), "reset" (the connection is reset, no response), "cut_body" (the response's headers
and half its body, then the connection is closed), "delay" (delay_ms, then forwarded). The
first rule that matches (method, and key_contains within the URL-decoded request target) and
has fired fewer than `times` times fires. Counts are kept per rule index and reset when the
file's content changes. Each request appends "METHOD target status" (target decoded) to
$SAVEPOINT_TEST_FAULT_LOG (status "-" when no response was sent), followed by " fault=ACTION"
when a rule fired.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape

ERRORS = {"503": (503, "Service Unavailable", "ServiceUnavailable", "Service is unable to handle request."),
          "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
          "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate.")}
lock = threading.Lock()
plan = {"text": None, "rules": [], "fired": {}}


def choose_fault(method, target):
    """The rule that fires for this request (counted), or None."""
    path = os.environ.get("SAVEPOINT_TEST_FAULT_PLAN")
    with lock:
        try:
            with open(path, "rb") as f:
                text = f.read()
        except (OSError, TypeError):
            text = b"[]"
        if text != plan["text"]:
            try:
                rules = json.loads(text or b"[]")
                assert isinstance(rules, list) and all(isinstance(r, dict) for r in rules)
            except (ValueError, AssertionError):
                print("s3_fault_proxy: %s is not a JSON list of rules; keeping the previous plan" % path, file=sys.stderr)
            else:
                plan.update(text=text, rules=rules, fired={})
        for i, rule in enumerate(plan["rules"]):
            if rule.get("method", "*") not in ("*", method) or rule.get("key_contains", "") not in target:
                continue
            if "times" in rule and plan["fired"].get(i, 0) >= rule["times"]:
                continue
            plan["fired"][i] = plan["fired"].get(i, 0) + 1
            return rule
    return None


def log(method, target, status, rule):
    path = os.environ.get("SAVEPOINT_TEST_FAULT_LOG")
    if path:
        with lock, open(path, "a") as f:
            f.write("%s %s %s%s\n" % (method, target, status, " fault=" + rule["action"] if rule else ""))


def read_head(f):
    """The start line and headers of a message (raw bytes, lines), or None at end of stream."""
    raw = b""
    while True:
        line = f.readline(65537)
        if not line:
            if raw:
                raise ConnectionError("connection closed inside a message head")
            return None
        if not raw and line in (b"\r\n", b"\n"):
            continue  # tolerated between messages
        raw += line
        if line in (b"\r\n", b"\n"):
            return raw
        if len(raw) > 1 << 20:
            raise ConnectionError("message head too large")


def header(raw, name):
    for line in raw.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip().decode("latin-1")
    return None


def read_exact(f, n):
    data = f.read(n)
    if len(data) != n:
        raise ConnectionError("connection closed inside a body")
    return data


def read_body(f, head, no_body=False):
    """The body as raw bytes (chunked: the chunks as sent), and whether it ran to end of stream."""
    if no_body:
        return b"", False
    if "chunked" in (header(head, b"transfer-encoding") or "").lower():
        out = b""
        while True:
            line = f.readline(65537)
            out += line
            size = int(line.split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    line = f.readline(65537)
                    out += line
                    if line in (b"\r\n", b"\n", b""):
                        return out, False
            out += read_exact(f, size + 2)
    length = header(head, b"content-length")
    if length is not None:
        return read_exact(f, int(length)), False
    if head.startswith(b"HTTP/"):
        return f.read(), True  # a response without a length: up to the close
    return b"", False


def error_response(action, method, target):
    status, reason, code, message = ERRORS[action]
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource>'
            '<RequestId>savepoint-fault-proxy</RequestId></Error>' % (code, message, escape(target.split("?")[0]))).encode()
    head = ("HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nContent-Length: %d\r\nx-amz-request-id: "
            "savepoint-fault-proxy\r\n\r\n" % (status, reason, len(body))).encode()
    return status, head + (b"" if method == "HEAD" else body)


def forward(upstream, request):
    """Sends the request upstream; the final response's head, body and whether to close after."""
    with socket.create_connection(upstream, timeout=300) as s:
        s.sendall(request)
        f = s.makefile("rb")
        method = request.split(b" ", 1)[0]
        while True:
            head = read_head(f)
            if head is None:
                raise ConnectionError("the server closed the connection without a response")
            status = int(head.split(b" ")[1])
            if status >= 200:
                break  # 1xx (100 Continue: already answered to the client) are dropped
        body, to_close = read_body(f, head, method == b"HEAD" or status in (204, 304))
        return status, head, body, to_close or (header(head, b"connection") or "").lower() == "close"


def serve(client, upstream):
    f = client.makefile("rb")
    try:
        while True:
            head = read_head(f)
            if head is None:
                return
            method, target, version = head.split(b"\r\n")[0].decode("latin-1").split(" ", 2)
            target = urllib.parse.unquote(target)  # CKPT%2Bx: botocore encodes the + of key names
            if (header(head, b"expect") or "").lower() == "100-continue":
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body, _ = read_body(f, head)
            close = version == "HTTP/1.0" or (header(head, b"connection") or "").lower() == "close"
            rule = choose_fault(method, target)
            action = rule and rule.get("action")
            if action == "reset":
                log(method, target, "-", rule)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                return
            if action in ERRORS:
                status, response = error_response(action, method, target)
                client.sendall(response)
                log(method, target, status, rule)
                if close:
                    return
                continue
            if action == "delay":
                time.sleep(rule.get("delay_ms", 0) / 1000.0)
            elif rule is not None and action != "cut_body":
                print("s3_fault_proxy: unknown action %r" % action, file=sys.stderr)
            try:
                status, rhead, rbody, to_close = forward(upstream, head + body)
            except (OSError, ValueError, IndexError) as e:
                print("s3_fault_proxy: %s %s: upstream failed: %s" % (method, target, e), file=sys.stderr)
                log(method, target, "-", rule)
                return
            if action == "cut_body":
                client.sendall(rhead + rbody[:len(rbody) // 2])
                log(method, target, status, rule)
                return
            client.sendall(rhead + rbody)
            log(method, target, status, rule)
            if close or to_close:
                return
    except (OSError, ValueError, IndexError) as e:  # a client gone, a malformed message
        print("s3_fault_proxy: connection dropped: %s" % e, file=sys.stderr)
    finally:
        f.close()  # the socket closes (and a reset is sent) only once its file is closed too
        client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    listener = socket.create_server((args.host, args.port), backlog=128)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, (host, int(port))), daemon=True).start()


if __name__ == "__main__":
    main()
