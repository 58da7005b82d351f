#!/usr/bin/env python3
"""A consumer function's runtime in Python (standard library only): it runs
docs/dpop.md's snippet as written (the test only points it at the
extension's port) and, per event, calls the resource server through it, or
misuses what the extension gave it to check the resource server refuses."""
import json
import os
import urllib.error
import urllib.parse
import urllib.request

with open(os.environ["DPOP_SNIPPET"]) as f:
    exec(f.read())

API = os.environ["AWS_LAMBDA_RUNTIME_API"]


def send(url, token, proof):
    req = urllib.request.Request(url, method="GET")
    req.add_header("Authorization", "DPoP " + token)
    if proof is not None:
        req.add_header("DPoP", proof)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def handle(ev):
    url, prov = ev["url"], ev.get("provider", "bank")
    nonce = _nonces.get(urllib.parse.urlsplit(url).netloc, "")
    op = ev["op"]
    if op == "request":
        try:
            status, body = dpop_request(prov, "GET", url, "read")
            return {"statuses": [status]}
        except urllib.error.HTTPError as e:
            return {"statuses": [e.code]}
    token, proof = token_and_proof(prov, "GET", url, "read", nonce)
    if op == "replay":
        return {"statuses": [send(url, token, proof), send(url, token, proof)]}
    if op == "other_url":
        return {"statuses": [send(ev["other"], token, proof)]}
    if op == "no_proof":
        return {"statuses": [send(url, token, None)]}
    if op == "other_token":  # a proof made for another provider's token
        _, other = token_and_proof(ev["other"], "GET", url, "read", nonce)
        return {"statuses": [send(url, token, other)]}
    raise ValueError(op)


while True:
    with urllib.request.urlopen(f"http://{API}/2018-06-01/runtime/invocation/next") as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    try:
        out = handle(event)
    except Exception as e:  # the test reads it; never the token or the proof
        out = {"error": type(e).__name__ + ": " + str(e)[:200]}
    urllib.request.urlopen(urllib.request.Request(
        f"http://{API}/2018-06-01/runtime/invocation/{request_id}/response", data=json.dumps(out).encode(), method="POST"))
