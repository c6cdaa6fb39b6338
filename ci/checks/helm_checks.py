#!/usr/bin/env python3
"""Checks for the flagrelay Helm chart and Dockerfile (run by ci/checks/helm.sh).

What it checks, each counted as one pass or fail:
  * `helm lint` (Helm's Go SDK through helm-python-sdk) with the default values
    and with every example values file: no error-severity findings.
  * Rendering with the default values, examples/redis-values.yaml,
    examples/redis-cluster-values.yaml, examples/sidecar-values.yaml,
    examples/sidecar-relay-values.yaml,
    examples/full-values.yaml, and the example
    application chart examples/app-chart (which includes the
    `flagrelay.sidecar` template from the chart as a subchart).
  * Every rendered object, validated with kubernetes-validate's strict schemas
    (unknown fields are errors) for the oldest Kubernetes the chart supports
    and the newest the package knows. Kinds with no built-in schema (CRDs such
    as monitoring.coreos.com/v1 ServiceMonitor) are YAML-parsed and checked
    for basic shape only; the output says so.
  * The chart's own invariants: the relay TOML in the Secret parses and
    matches the values, flags.json parses and covers every environment,
    security context, probes, graceful-shutdown arithmetic, native sidecar
    shape, the expected set of objects per scenario.
  * The Grafana dashboard ConfigMap (dashboard.enabled): rendered, with the
    sidecar label and the chart's dashboards/flagrelay.json byte for byte,
    only when enabled; the label is configurable.
  * Values the chart must refuse (e.g. a drain window longer than the
    shutdown timeout) fail the render with a message.
  * hadolint on the Dockerfile.

Ends with the line "N passed, M failed"; exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover - older Pythons
    import tomli as tomllib  # type: ignore[no-redef]

import helm_python as helm
import kubernetes_validate
from kubernetes_validate import utils as kv

MIN_KUBE = "1.29.0"  # native sidecars; matches Chart.yaml kubeVersion
RELEASE = "ci"
NAMESPACE = "flagrelay-ci"
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

# Inline values for the "extras" scenario.
EXTRAS: dict[str, Any] = {
    "listenHost": "::",
    "image": {"repository": "registry.example.com/flagrelay", "digest": "sha256:" + "0" * 64},
    "log": {"level": "debug", "format": "text"},
    "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
    "extraArgs": ["--listen", "[::]:7700"],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
    "service": {"exposeAdmin": False},
    "podDisruptionBudget": {"enabled": True},
    "lifecycle": {"preStopSleepSeconds": 0},
    "startupProbe": {"enabled": False},
    "config": {
        "environments": [
            {"id": "production", "serverKeys": ['k"quoted"', 12345]},
            {"id": "staging.eu-1", "clientKeys": ["sdk-js-staging"]},
        ],
        "sse": {
            "maxConnectionAgeSecs": 900,
            "extra": {"retry_ms": 3000, "max_connections": 20000, "client_buffer_bytes": 65536},
        },
        "http": {
            "max_body_bytes": 1048576,
            "cors_allowed_origins": ["https://app.example.com"],
            "sdk_config": {"eventsEnabled": True, "pollIntervalSeconds": 20, "mode": "summary"},
        },
        "upstream": {
            "file": {"existingConfigMap": "my-flags", "existingConfigMapKey": "all.json", "pollIntervalMs": 500},
        },
    },
}


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures: list[str] = []

    def skip(self, name: str, why: str) -> None:
        self.skipped += 1
        print(f"SKIP {name}: {why}")

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        print(f"PASS {name}" + (f" ({detail})" if detail else ""))

    def fail(self, name: str, why: str) -> None:
        self.failed += 1
        self.failures.append(f"{name}: {why}")
        print(f"FAIL {name}: {why}")

    def check(self, name: str, fn: Callable[[], str | None]) -> Any:
        """Run fn; an exception or AssertionError is a failure, else a pass."""
        try:
            detail = fn()
        except AssertionError as e:
            self.fail(name, str(e) or "assertion failed")
            return False
        except Exception as e:  # noqa: BLE001 - report anything as a failure
            self.fail(name, f"{type(e).__name__}: {e}")
            if os.environ.get("FLAGRELAY_CI_DEBUG"):
                traceback.print_exc()
            return False
        self.ok(name, detail or "")
        return True


def load_values(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path) as f:
        return yaml.safe_load(f) or {}


def render(chart_dir: Path, values: dict[str, Any] | None) -> dict[str, str]:
    with helm.Chart.load(str(chart_dir)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def merged_values(chart_dir: Path, values: dict[str, Any] | None) -> dict[str, Any]:
    with helm.Chart.load(str(chart_dir)) as chart:
        return chart.merge_values(values)


def objects_of(manifests: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(template path, object) for every non-empty YAML document; NOTES.txt is text, not YAML."""
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((path, doc))
    return out


def find(objs: list[tuple[str, dict]], kind: str, name: str | None = None) -> list[dict]:
    return [o for _, o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


# ---------------------------------------------------------------- invariants


def check_container_security(c: dict[str, Any]) -> None:
    sc = c.get("securityContext") or {}
    name = c.get("name")
    assert sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true"
    assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem is not true"
    assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false"
    assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{name}: capabilities.drop is not [ALL]"
    assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{name}: seccomp is not RuntimeDefault"


def check_relay_probes(c: dict[str, Any], admin_port: int) -> None:
    name = c.get("name")
    live = c.get("livenessProbe", {}).get("httpGet", {})
    ready = c.get("readinessProbe", {}).get("httpGet", {})
    assert live.get("path") == "/healthz" and live.get("port") == admin_port, f"{name}: liveness is not /healthz on {admin_port}"
    assert ready.get("path") == "/readyz" and ready.get("port") == admin_port, f"{name}: readiness is not /readyz on {admin_port}"


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def relay_toml(objs: list[tuple[str, dict]], secret_name: str) -> dict[str, Any]:
    secrets = find(objs, "Secret", secret_name)
    assert secrets, f"no Secret {secret_name}"
    text = secrets[0].get("stringData", {}).get("flagrelay.toml")
    assert text, f"Secret {secret_name} has no flagrelay.toml"
    return tomllib.loads(text)


def check_toml_matches(cfg: dict[str, Any], vals: dict[str, Any], listen: str, admin: str) -> str:
    c = vals["config"]
    assert cfg["listen"] == listen, f"listen {cfg['listen']!r} != {listen!r}"
    assert cfg["admin_listen"] == admin, f"admin_listen {cfg['admin_listen']!r} != {admin!r}"
    assert cfg["shutdown_timeout_secs"] == c["shutdownTimeoutSecs"]
    assert cfg["sse"]["heartbeat_secs"] == c["sse"]["heartbeatSecs"]
    assert cfg["sse"]["drain_window_secs"] == c["sse"]["drainWindowSecs"]
    assert cfg["sse"]["drain_window_secs"] < cfg["shutdown_timeout_secs"], "drain window not below shutdown timeout"
    up = cfg["upstream"]
    assert up["kind"] == c["upstream"]["kind"]
    if up["kind"] == "relay":
        # The parent relay's URL holds no secret: it is written into the TOML.
        assert up.get("url") == c["upstream"]["relay"]["url"], f"relay url {up.get('url')!r}"
    else:
        assert "url" not in up, "the Redis URL must not be written into the TOML"
    if up["kind"] == "relay":
        assert "prefix" not in up and "path" not in up, "keys of another upstream kind in relay mode"
    elif up["kind"] == "file":
        assert up["path"] == "/etc/flagrelay/flags/flags.json", f"flags path {up['path']!r}"
        assert up["poll_interval_ms"] == c["upstream"]["file"]["pollIntervalMs"]
    else:
        r = c["upstream"]["redis"]
        assert up["prefix"] == r["prefix"]
        if r["sentinel"]["addresses"]:
            assert up["sentinel"]["addresses"] == r["sentinel"]["addresses"]
            assert up["sentinel"]["master_name"] == r["sentinel"]["masterName"]
        if r["cluster"]["enabled"]:
            assert up.get("cluster") is True, f"cluster {up.get('cluster')!r}, expected true"
            assert up.get("cluster_seeds", []) == [str(x) for x in r["cluster"]["seeds"] or []], "cluster_seeds differ"
            assert "sentinel" not in up, "cluster mode with [upstream.sentinel]"
        else:
            assert "cluster" not in up and "cluster_seeds" not in up, "cluster keys without cluster.enabled"
    for k, v in (c["upstream"].get("extra") or {}).items():
        assert up.get(k) == v, f"upstream.{k}: {up.get(k)!r} != {v!r}"
    age = c["sse"].get("maxConnectionAgeSecs") or 0
    assert cfg["sse"].get("max_connection_age_secs", 0) == age, "sse.max_connection_age_secs"
    for k, v in (c["sse"].get("extra") or {}).items():
        assert cfg["sse"].get(k) == v, f"sse.{k}: {cfg['sse'].get(k)!r} != {v!r}"
    assert cfg.get("http", {}) == (c.get("http") or {}), f"http: {cfg.get('http')!r} != {c.get('http')!r}"
    envs = cfg.get("environments", [])
    assert [e["id"] for e in envs] == [e["id"] for e in c["environments"]], "environment ids differ"
    for e, v in zip(envs, c["environments"]):
        assert e["server_keys"] == [str(k) for k in v.get("serverKeys") or []], f"{e['id']}: server_keys differ"
        assert e["client_keys"] == [str(k) for k in v.get("clientKeys") or []], f"{e['id']}: client_keys differ"
        assert e.get("upstream_key") == v.get("upstreamKey"), f"{e['id']}: upstream_key differs"
    return f"{len(envs)} environment(s), upstream {up['kind']}"


# TOML table -> the serde struct that reads it (all deny_unknown_fields), per
# source layout: src/config/raw.rs (the config module), or the older single
# src/config.rs.
CONFIG_LAYOUTS = [
    (Path("src/config/raw.rs"), {
        "": "RawConfig",
        "upstream": "RawUpstream",
        "upstream.sentinel": "RawSentinel",
        "environments": "RawEnvironment",
        "sse": "RawSse",
        "http": "RawHttp",
    }),
    (Path("src/config.rs"), {
        "": "FileConfig",
        "upstream": "FileUpstreamSection",
        "upstream.sentinel": "FileSentinel",
        "environments": "FileEnvironment",
        "sse": "FileSse",
        "http": "FileHttp",
    }),
]
FREE_TABLES = {"http.sdk_config"}  # toml::Table: any keys


def relay_config_fields(repo: Path) -> dict[str, set[str]] | None:
    """Field names of the relay's config-file structs, or None when no known layout is there."""
    for rel, structs in CONFIG_LAYOUTS:
        if not (repo / rel).exists():
            continue
        text = (repo / rel).read_text()
        out: dict[str, set[str]] = {}
        for table, struct in structs.items():
            m = re.search(r"struct\s+%s\s*\{(.*?)\n\}" % struct, text, re.S)
            if not m:
                break
            out[table] = set(re.findall(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?(\w+)\s*:", m.group(1), re.M))
        else:
            return out
    return None


def check_keys_known(cfg: dict[str, Any], fields: dict[str, set[str]]) -> str:
    """Every key of the rendered TOML is one the relay reads (it rejects unknown ones)."""
    seen = 0

    def walk(table: str, obj: dict[str, Any]) -> None:
        nonlocal seen
        if table in FREE_TABLES:
            return
        allowed = fields.get(table)
        assert allowed is not None, f"[{table}] is not a table the relay reads"
        for k, v in obj.items():
            assert k in allowed, f"{(table + '.') if table else ''}{k} is not a setting the relay knows"
            seen += 1
            sub = f"{table}.{k}" if table else k
            if isinstance(v, dict):
                walk(sub, v)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for x in v:
                    walk(sub, x)
    walk("", cfg)
    return f"{seen} key(s) known to the relay's config structs"


def check_flags(objs: list[tuple[str, dict]], cm_name: str, env_ids: list[str]) -> str:
    cms = find(objs, "ConfigMap", cm_name)
    assert cms, f"no ConfigMap {cm_name}"
    flags = json.loads(cms[0]["data"]["flags.json"])
    assert isinstance(flags, dict), "flags.json is not an object"
    missing = [e for e in env_ids if e not in flags]
    assert not missing, f"flags.json lacks environments {missing}"
    return f"{len(flags)} environment(s)"


# ----------------------------------------------------------------- scenarios


class Scenario:
    def __init__(self, name: str, chart: Path, values: Path | dict[str, Any] | None, expect_kinds: dict[str, int],
                 relay_chart: Path, subchart_key: str | None = None) -> None:
        self.name = name
        self.chart = chart
        self.values = values  # a values file, inline values, or None for the defaults
        self.expect_kinds = expect_kinds
        self.relay_chart = relay_chart
        self.subchart_key = subchart_key  # values key of the relay in a parent chart


def validate_objects(res: Results, scen: str, objs: list[tuple[str, dict]], kube_versions: list[str]) -> None:
    for path, obj in objs:
        ident = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        key = (obj.get("apiVersion"), obj.get("kind"))

        def shape() -> str | None:
            assert obj.get("apiVersion") and obj.get("kind"), "apiVersion/kind missing"
            assert obj.get("metadata", {}).get("name"), "metadata.name missing"
            return None

        if not res.check(f"[{scen}] {ident} has apiVersion, kind, metadata.name", shape):
            continue
        for ver in kube_versions:
            def one(ver: str = ver) -> str:
                try:
                    kv.validate(obj, ver, strict=True)
                except kv.SchemaNotFoundError:
                    if key in CRD_KINDS:
                        return "CRD: no built-in schema, YAML-parsed and shape-checked only"
                    raise AssertionError(f"no schema for {key} in Kubernetes {ver} (unexpected kind)")
                except kv.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    raise AssertionError(f"{path}: {where}: {e.message}")
                return "strict schema"
            res.check(f"[{scen}] {ident} schema, Kubernetes {ver}", one)
        if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
            def sm() -> str:
                eps = obj["spec"]["endpoints"]
                assert eps and all(e.get("port") for e in eps), "endpoints need a port"
                assert obj["spec"]["selector"]["matchLabels"], "selector.matchLabels empty"
                return f"{len(eps)} endpoint(s)"
            res.check(f"[{scen}] {ident} ServiceMonitor shape", sm)


def run_scenario(res: Results, s: Scenario, kube_versions: list[str]) -> None:
    values = s.values if isinstance(s.values, dict) else load_values(s.values)
    try:
        manifests = render(s.chart, values)
    except Exception as e:  # noqa: BLE001
        res.fail(f"[{s.name}] render", f"{type(e).__name__}: {e}")
        return
    objs = objects_of(manifests)
    res.ok(f"[{s.name}] render", f"{len(objs)} object(s)")

    def kinds() -> str:
        got: dict[str, int] = {}
        for _, o in objs:
            got[o["kind"]] = got.get(o["kind"], 0) + 1
        assert got == s.expect_kinds, f"objects {got} != expected {s.expect_kinds}"
        return ", ".join(f"{k}x{n}" for k, n in sorted(got.items()))
    res.check(f"[{s.name}] expected objects", kinds)

    validate_objects(res, s.name, objs, kube_versions)

    # The relay's effective values (the subchart's, for a parent chart).
    all_vals = merged_values(s.chart, values)
    vals = all_vals[s.subchart_key] if s.subchart_key else all_vals
    if s.subchart_key:
        # Subchart defaults are coalesced in at render time, not by merge_values.
        vals = merged_values(s.relay_chart, vals)
    mode = vals["mode"]
    fullname = f"{RELEASE}-flagrelay"
    admin_port = int(vals["ports"]["admin"])
    http_port = int(vals["ports"]["http"])
    c = vals["config"]

    if not c["existingSecret"]:
        if mode == "sidecar":
            listen = f"{vals['sidecar']['listenHost']}:{http_port}"
            admin = f"{vals['sidecar']['adminListenHost']}:{admin_port}"
        else:
            host = vals["listenHost"]
            host = f"[{host}]" if ":" in host else host
            listen, admin = f"{host}:{http_port}", f"{host}:{admin_port}"
        res.check(f"[{s.name}] flagrelay.toml parses and matches values",
                  lambda: check_toml_matches(relay_toml(objs, fullname), vals, listen, admin))
        fields = relay_config_fields(s.relay_chart.parent.parent)
        if fields is None:
            res.skip(f"[{s.name}] flagrelay.toml keys are known to the relay", "config structs not found in src/")
        else:
            res.check(f"[{s.name}] flagrelay.toml keys are known to the relay",
                      lambda: check_keys_known(relay_toml(objs, fullname), fields))
    if c["upstream"]["kind"] == "file" and not c["upstream"]["file"]["existingConfigMap"]:
        ids = [e["id"] for e in c["environments"]]
        res.check(f"[{s.name}] flags.json parses and covers every environment",
                  lambda: check_flags(objs, f"{fullname}-flags", ids))
    def dashboard_cm() -> str:
        cms = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"] == f"{fullname}-dashboard"]
        if not vals["dashboard"]["enabled"]:
            assert not cms, "dashboard ConfigMap rendered although dashboard.enabled is false"
            return "not rendered (dashboard.enabled false)"
        assert len(cms) == 1, f"{len(cms)} dashboard ConfigMaps"
        return check_dashboard_configmap(cms[0], s.relay_chart, vals["dashboard"])
    res.check(f"[{s.name}] dashboard ConfigMap only when enabled", dashboard_cm)
    cluster = c["upstream"]["redis"]["cluster"]
    if c["upstream"]["kind"] == "redis" and cluster["enabled"] and not c["existingSecret"]:
        def cluster_toml() -> str:
            text = find(objs, "Secret", fullname)[0]["stringData"]["flagrelay.toml"]
            upstream = text.split("[upstream]", 1)[1].split("\n[", 1)[0]
            assert re.search(r"^cluster = true$", upstream, re.M), "no `cluster = true` line in [upstream]"
            seeds = [str(x) for x in cluster["seeds"] or []]
            got = tomllib.loads(text)["upstream"].get("cluster_seeds", [])
            assert got == seeds, f"cluster_seeds {got!r} != {seeds!r}"
            return f"cluster = true, {len(seeds)} seed(s)"
        res.check(f"[{s.name}] flagrelay.toml has cluster = true and the seeds", cluster_toml)
    if c["upstream"]["kind"] == "redis":
        def redis_env() -> str:
            pods = [d["spec"]["template"]["spec"] for d in find(objs, "Deployment")]
            relays = [x for p in pods for x in p.get("containers", []) + p.get("initContainers", [])
                      if "FLAGRELAY_CONFIG" in env_of(x)]
            assert relays, "no relay container"
            for x in relays:
                ref = env_of(x).get("FLAGRELAY_REDIS_URL")
                assert ref and "secretKeyRef" in ref, "FLAGRELAY_REDIS_URL is not from a Secret"
                want = c["upstream"]["redis"]["existingSecret"] or fullname
                assert ref["secretKeyRef"]["name"] == want, f"Redis URL Secret {ref['secretKeyRef']['name']} != {want}"
            return "FLAGRELAY_REDIS_URL from Secret"
        res.check(f"[{s.name}] Redis URL comes from a Secret", redis_env)

    for dep in find(objs, "Deployment"):
        dname = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        containers = pod.get("containers", []) + pod.get("initContainers", [])
        relays = [x for x in containers if "FLAGRELAY_CONFIG" in env_of(x)]

        def security(pod: dict = pod, relays: list = relays) -> str:
            assert relays, "no relay container"
            for x in relays:
                check_container_security(x)
            psc = pod.get("securityContext") or {}
            assert psc.get("runAsNonRoot") is True, "pod runAsNonRoot is not true"
            return f"{len(relays)} relay container(s)"
        res.check(f"[{s.name}] {dname}: relay securityContext", security)

        def probes(relays: list = relays) -> str:
            for x in relays:
                check_relay_probes(x, admin_port)
                assert x.get("resources", {}).get("requests") and x["resources"].get("limits"), "resources incomplete"
            return "liveness /healthz, readiness /readyz, resources set"
        res.check(f"[{s.name}] {dname}: relay probes and resources", probes)

        def volumes(pod: dict = pod, relays: list = relays) -> str:
            names = {v["name"] for v in pod.get("volumes", [])}
            for x in relays:
                for m in x.get("volumeMounts", []):
                    assert m["name"] in names, f"mount {m['name']} has no volume"
            return f"{len(names)} volume(s)"
        res.check(f"[{s.name}] {dname}: every relay mount has a volume", volumes)

        sidecars = [x for x in pod.get("initContainers", []) if "FLAGRELAY_CONFIG" in env_of(x)]
        if sidecars:
            def sidecar(pod: dict = pod, sidecars: list = sidecars) -> str:
                for x in sidecars:
                    assert x.get("restartPolicy") == "Always", "native sidecar needs restartPolicy: Always"
                    env = env_of(x)
                    assert env["FLAGRELAY_LISTEN"] == f"127.0.0.1:{http_port}", f"sidecar listens on {env['FLAGRELAY_LISTEN']}"
                    assert x.get("startupProbe"), "sidecar has no startup probe"
                apps = pod.get("containers", [])
                assert apps, "no application container"
                for a in apps:
                    assert env_of(a).get("FLAGRELAY_URL") == f"http://127.0.0.1:{http_port}", f"{a['name']}: FLAGRELAY_URL"
                ann = dep["spec"]["template"]["metadata"].get("annotations", {})
                assert "checksum/flagrelay-config" in ann, "no config checksum annotation"
                return "initContainers[restartPolicy=Always] on 127.0.0.1, app gets FLAGRELAY_URL"
            res.check(f"[{s.name}] {dname}: native sidecar", sidecar)
        else:
            def shutdown(pod: dict = pod, relays: list = relays) -> str:
                grace = pod["terminationGracePeriodSeconds"]
                sleep = relays[0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                budget = sleep + c["shutdownTimeoutSecs"]
                assert grace > budget, f"terminationGracePeriodSeconds {grace} <= preStop {sleep} + shutdown {c['shutdownTimeoutSecs']}"
                assert c["sse"]["drainWindowSecs"] < c["shutdownTimeoutSecs"], "drain window >= shutdown timeout"
                strategy = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
                assert strategy.get("maxUnavailable") == 0, "rolling update may drop below desired replicas"
                env = env_of(relays[0])
                assert env["FLAGRELAY_LISTEN"].endswith(f":{http_port}") and not env["FLAGRELAY_LISTEN"].startswith(("127.", "[::1]")), \
                    f"deployment listens on {env['FLAGRELAY_LISTEN']}"
                return f"grace {grace}s > preStop {sleep}s + shutdown {c['shutdownTimeoutSecs']}s > drain {c['sse']['drainWindowSecs']}s"
            res.check(f"[{s.name}] {dname}: graceful shutdown budget", shutdown)


def check_dashboard_configmap(cm: dict[str, Any], chart: Path, d: dict[str, Any]) -> str:
    """The dashboard ConfigMap carries the sidecar's label and the chart's dashboard JSON unchanged."""
    labels = cm["metadata"].get("labels") or {}
    assert labels.get(d["label"]) == str(d["labelValue"]), \
        f"label {d['label']}={labels.get(d['label'])!r}, expected {d['labelValue']!r}"
    if d["label"] != "grafana_dashboard":
        assert "grafana_dashboard" not in labels, "the default label is there beside the configured one"
    for k, v in (d.get("labels") or {}).items():
        assert labels.get(k) == v, f"extra label {k}"
    for k, v in (d.get("annotations") or {}).items():
        assert (cm["metadata"].get("annotations") or {}).get(k) == v, f"annotation {k}"
    data = cm.get("data") or {}
    assert list(data) == ["flagrelay.json"], f"data keys {list(data)}"
    source = (chart / "dashboards" / "flagrelay.json").read_text()
    assert data["flagrelay.json"] == source.strip(), "the ConfigMap's JSON differs from dashboards/flagrelay.json"
    dash = json.loads(data["flagrelay.json"])
    assert dash.get("uid") == "flagrelay" and dash.get("panels"), "not the flagrelay dashboard"
    return f"{d['label']}={d['labelValue']}, {len(dash['panels'])} panels, {len(data['flagrelay.json'])} bytes"


def run_negative(res: Results, chart: Path, name: str, values: dict[str, Any], expect: str) -> None:
    def neg() -> str:
        try:
            render(chart, values)
        except Exception as e:  # noqa: BLE001
            assert expect in str(e), f"failed, but without {expect!r}: {e}"
            return "refused"
        raise AssertionError("rendered although the values are invalid")
    res.check(f"[refuse] {name}", neg)


def lint_chart(chart: Path, values: dict[str, Any] | None) -> str:
    """helm lint --strict (warnings count as errors) for the oldest supported Kubernetes."""
    report = helm.lint(str(chart), values, strict=True, namespace=NAMESPACE, kube_version=f"v{MIN_KUBE}")
    errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + \
             [{"path": "", "error": e} for e in report.get("errors", [])]
    assert not errors, "; ".join(f"{m.get('path')}: {m.get('error')}" for m in errors)
    infos = [m["error"] for m in report.get("messages", []) if m.get("severity") == 1]
    return "no warnings or errors" + (f"; info: {', '.join(infos)}" if infos else "")


def check_copy_sources(res: Results, dockerfile: Path) -> None:
    """Every build-context path the Dockerfile COPYs exists and is not excluded by .dockerignore.

    A missing path is reported as skipped, not failed: the relay's example
    config (config/) is written by the Rust side and may not be in the tree yet.
    """
    context = dockerfile.resolve().parent
    ignore_file = context / ".dockerignore"
    ignored = {line.strip().strip("/") for line in ignore_file.read_text().splitlines()
               if line.strip() and not line.startswith("#")} if ignore_file.exists() else set()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        for src in [w for w in words[1:-1] if not w.startswith("--")]:
            if src == ".":
                continue
            name = f"[docker] COPY source {src} in the build context"
            top = src.strip("/").split("/")[0]
            if top in ignored or src.strip("/") in ignored:
                res.fail(name, f"excluded by .dockerignore ({top})")
            elif not (context / src).exists():
                res.skip(name, "not in the tree yet; the image build needs it")
            else:
                res.ok(name)


def build_app_chart(chart: Path, workdir: Path) -> Path:
    """examples/app-chart with the relay chart vendored as charts/flagrelay."""
    app = workdir / "app-chart"
    shutil.copytree(chart / "examples" / "app-chart", app)
    shutil.copytree(chart, app / "charts" / "flagrelay", ignore=shutil.ignore_patterns("examples"))
    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chart", default="helm/flagrelay", type=Path)
    ap.add_argument("--dockerfile", default="Dockerfile", type=Path)
    ap.add_argument("--hadolint", default="hadolint")
    args = ap.parse_args()
    chart: Path = args.chart.resolve()
    ex = chart / "examples"
    res = Results()
    kube_versions = [MIN_KUBE, kv.latest_version()]
    print(f"helm SDK {helm.helm_sdk_version()} (helm-c {helm.helm_c_version()}), "
          f"kubernetes-validate {getattr(kubernetes_validate, '__version__', '?')}, "
          f"schemas for Kubernetes {', '.join(kube_versions)}")

    # -- lint, with each values set
    for label, vf in [("default", None), ("redis", ex / "redis-values.yaml"),
                      ("redis-cluster", ex / "redis-cluster-values.yaml"),
                      ("sidecar", ex / "sidecar-values.yaml"), ("sidecar-relay", ex / "sidecar-relay-values.yaml"),
                      ("full", ex / "full-values.yaml")]:
        res.check(f"[lint] {label} values", lambda vf=vf: lint_chart(chart, load_values(vf)))

    with tempfile.TemporaryDirectory(prefix="flagrelay-helm-") as tmp:
        app_chart = build_app_chart(chart, Path(tmp))
        res.check("[lint] example app chart (relay as subchart)", lambda: lint_chart(app_chart, None))

        base = {"Deployment": 1, "Service": 1, "ServiceAccount": 1}
        scenarios = [
            Scenario("default", chart, None, {**base, "Secret": 1, "ConfigMap": 1}, chart),
            # Config and Redis URL both from existing Secrets: the chart renders neither.
            Scenario("redis", chart, ex / "redis-values.yaml", dict(base), chart),
            # Redis Cluster: config rendered (cluster = true, seeds), URL from an existing Secret.
            Scenario("redis-cluster", chart, ex / "redis-cluster-values.yaml", {**base, "Secret": 1}, chart),
            Scenario("sidecar", chart, ex / "sidecar-values.yaml", {"Secret": 1, "ConfigMap": 1, "Deployment": 1}, chart),
            # A sidecar whose upstream is a central relay Service: no flags ConfigMap, no Redis URL.
            Scenario("sidecar-relay", chart, ex / "sidecar-relay-values.yaml", {"Secret": 1, "Deployment": 1}, chart),
            Scenario("full", chart, ex / "full-values.yaml",
                     {**base, "Secret": 1, "HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1, "ServiceMonitor": 1},
                     chart),
            # Optional knobs: IPv6 bind, extra env/args/volumes, flags from an
            # existing ConfigMap, default PDB, image by digest, admin port hidden.
            Scenario("extras", chart, EXTRAS, {**base, "Secret": 1, "PodDisruptionBudget": 1}, chart),
            # The Grafana dashboard for the sidecar, with the default label and with another one.
            Scenario("dashboard", chart, {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "Flags"}}},
                     {**base, "Secret": 1, "ConfigMap": 2}, chart),
            Scenario("dashboard-label", chart,
                     {"dashboard": {"enabled": True, "label": "example.com/dashboard", "labelValue": "flagrelay",
                                    "labels": {"team": "flags"}}},
                     {**base, "Secret": 1, "ConfigMap": 2}, chart),
            Scenario("app-chart", app_chart, None, {"Secret": 1, "ConfigMap": 1, "Deployment": 1}, chart,
                     subchart_key="flagrelay"),
        ]
        for s in scenarios:
            run_scenario(res, s, kube_versions)

    # -- values the chart must refuse
    run_negative(res, chart, "drain window not below shutdown timeout",
                 {"config": {"shutdownTimeoutSecs": 5, "sse": {"drainWindowSecs": 5}}}, "drainWindowSecs")
    run_negative(res, chart, "grace period not above preStop + shutdown timeout",
                 {"terminationGracePeriodSeconds": 15}, "terminationGracePeriodSeconds")
    run_negative(res, chart, "redis upstream without URL or Secret",
                 {"config": {"upstream": {"kind": "redis"}}}, "config.upstream.redis.url")
    run_negative(res, chart, "environment without flags in file mode",
                 {"config": {"environments": [{"id": "staging", "serverKeys": ["s1"]}]}}, "no entry for environment")
    run_negative(res, chart, "duplicate environment id",
                 {"config": {"environments": [{"id": "production", "serverKeys": ["a"]},
                                              {"id": "production", "serverKeys": ["b"]}]}}, "duplicate id")
    run_negative(res, chart, "environment without keys",
                 {"config": {"environments": [{"id": "production"}]}}, "at least one key")
    run_negative(res, chart, "SDK key used twice",
                 {"config": {"environments": [{"id": "production", "serverKeys": ["a"], "clientKeys": ["a"]}]}},
                 "every key must be unique")
    run_negative(res, chart, "SDK key with whitespace",
                 {"config": {"environments": [{"id": "production", "serverKeys": ["a b"]}]}}, "whitespace")
    run_negative(res, chart, "environment id with a slash",
                 {"config": {"environments": [{"id": "prod/eu", "serverKeys": ["a"]}],
                             "upstream": {"file": {"flags": {"prod/eu": {}}}}}}, "use letters, digits")
    run_negative(res, chart, "Redis URL without a redis scheme",
                 {"config": {"upstream": {"kind": "redis", "redis": {"url": "http://redis:6379"}}}}, "must be a redis://")
    redis = {"kind": "redis", "redis": {"url": "redis://redis:6379"}}
    run_negative(res, chart, "Redis Cluster together with Sentinel",
                 {"config": {"upstream": {**redis, "redis": {**redis["redis"], "cluster": {"enabled": True},
                                                             "sentinel": {"addresses": ["s:26379"], "masterName": "m"}}}}},
                 "cannot be combined with config.upstream.redis.sentinel")
    run_negative(res, chart, "cluster seeds without cluster mode",
                 {"config": {"upstream": {**redis, "redis": {**redis["redis"], "cluster": {"seeds": ["b:6379"]}}}}},
                 "set config.upstream.redis.cluster.enabled")
    run_negative(res, chart, "Redis Cluster over a unix socket",
                 {"config": {"upstream": {"kind": "redis", "redis": {"url": "unix:///run/redis.sock",
                                                                      "cluster": {"enabled": True}}}}},
                 "needs a redis:// or rediss:// URL")
    run_negative(res, chart, "cluster seed without a port",
                 {"config": {"upstream": {**redis, "redis": {**redis["redis"], "cluster": {"enabled": True, "seeds": ["b"]}}}}},
                 "is not host:port")
    run_negative(res, chart, "cluster seed URL of another scheme",
                 {"config": {"upstream": {**redis, "redis": {**redis["redis"],
                                                             "cluster": {"enabled": True, "seeds": ["rediss://b:6379"]}}}}},
                 "every seed URL uses the scheme")
    run_negative(res, chart, "upstream extra setting cluster that the chart renders",
                 {"config": {"upstream": {**redis, "extra": {"cluster": True}}}}, "set by the chart")
    run_negative(res, chart, "extra setting that the chart already renders",
                 {"config": {"sse": {"extra": {"heartbeat_secs": 5}}}}, "set by the chart")
    run_negative(res, chart, "extra setting with a map value",
                 {"config": {"sse": {"extra": {"retry": {"ms": 5}}}}}, "is a map")
    run_negative(res, chart, "dashboard without a sidecar label",
                 {"dashboard": {"enabled": True, "label": ""}}, "dashboard.label")
    run_negative(res, chart, "HPA in sidecar mode",
                 {"mode": "sidecar", "autoscaling": {"enabled": True}}, "deployment mode only")
    run_negative(res, chart, "unknown mode", {"mode": "daemonset"}, "mode must be")
    run_negative(res, chart, "relay upstream without a url", {"config": {"upstream": {"kind": "relay"}}}, "config.upstream.relay.url")

    # -- Dockerfile
    def hadolint() -> str:
        p = subprocess.run([args.hadolint, "--no-color", str(args.dockerfile)], capture_output=True, text=True)
        out = (p.stdout + p.stderr).strip()
        assert p.returncode == 0, out or f"exit {p.returncode}"
        return "clean"
    res.check(f"[hadolint] {args.dockerfile}", hadolint)

    check_copy_sources(res, args.dockerfile)

    if res.failures:
        print("\nFailures:")
        for f in res.failures:
            print(f"  {f}")
    summary = f"{res.passed} passed, {res.failed} failed"
    if res.skipped:
        summary += f", {res.skipped} skipped"
    print(f"\n{summary}")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
