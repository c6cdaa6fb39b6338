"""Drives the real featureflow-sdk 0.3.0 (PyPI) against a relay, for tests/compression.rs.

Usage: python featureflow_python.py <baseUrl> <serverKey> <featureKey>
The SDK hard-codes app.featureflow.io; its two URL class attributes are pointed at the relay
before the client starts (nothing else of it is touched). Prints one JSON line:
  {"step": "ready", "value": <the feature's variant for user u1>, "features": <count>,
   "accept_encoding": <what requests asks for>, "content_encoding": <what the relay answered>}
"""
import json
import os
import sys
import time

import requests
import featureflow
from featureflow import polling_client, events

base, key, feature = sys.argv[1:4]
polling_client.PollingClient.API_ENDPOINT = base + "/api/sdk/v1/features"
events.Events.API_BASE = base + "/api/sdk/v1"

seen = {}
original_get = requests.get


def spy(url, **kw):
    r = original_get(url, **kw)
    if url.endswith("/api/sdk/v1/features"):
        seen["accept_encoding"] = r.request.headers.get("Accept-Encoding")
        seen["content_encoding"] = r.headers.get("Content-Encoding")
    return r


requests.get = spy
# The SDK's polling and events threads are not daemons: every way out is os._exit.
try:
    ff = featureflow.Featureflow(key)
    deadline = time.time() + 30
    while not ff._features and time.time() < deadline:
        time.sleep(0.05)
    if not ff._features:
        print(json.dumps({"step": "error", "message": "no features within 30 s"}), flush=True)
        os._exit(2)
    value = ff.evaluate(feature, featureflow.User(key="u1")).value()
    print(json.dumps({"step": "ready", "value": value, "features": len(ff._features), **seen}), flush=True)
    os._exit(0)
except BaseException as e:  # noqa: BLE001 - report anything, then exit
    print(json.dumps({"step": "error", "message": repr(e)}), flush=True)
    os._exit(2)
