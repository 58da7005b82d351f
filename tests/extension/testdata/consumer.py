#!/usr/bin/env python3
"""A consumer function's runtime, in Python with the standard library only:
it polls the Lambda Runtime API and, for each event, asks the token-vendor
extension on loopback, as a real consumer would, then answers with what it
got (a digest of the token, never the token)."""
import hashlib
import json
import os
import urllib.error
import urllib.request

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "http://127.0.0.1:" + os.environ.get("TOKEN_VENDOR_PORT", "2790")

while True:
    with urllib.request.urlopen(f"http://{API}/2018-06-01/runtime/invocation/next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    data = json.dumps(event["body"]).encode() if "body" in event else None
    req = urllib.request.Request(BASE + event["path"], data=data, method=event.get("method", "GET"))
    header = {"session": os.environ["AWS_SESSION_TOKEN"], "wrong": "not-the-session-token"}.get(event.get("header", "session"))
    if header is not None:
        req.add_header("X-Token-Vendor-Session-Token", header)
    try:
        with urllib.request.urlopen(req) as resp:
            status, body = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        status, body = e.code, json.loads(e.read())
    out = {"status": status, "error": body.get("error", "")}
    if "access_token" in body:
        out["token_sha256"] = hashlib.sha256(body["access_token"].encode()).hexdigest()
        out["expires_in"] = body["expires_in"]
    urllib.request.urlopen(urllib.request.Request(
        f"http://{API}/2018-06-01/runtime/invocation/{request_id}/response", data=json.dumps(out).encode(), method="POST"))
