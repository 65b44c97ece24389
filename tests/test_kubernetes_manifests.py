"""examples/kubernetes/: every manifest is validated the way an API server with strict field validation would
take it, and the objects are checked against each other.

- Kubernetes' own kinds: against the API's JSON schemas in strict mode (unknown fields are errors), with
  kubernetes-validate, which bundles the schemas of each Kubernetes release (no network), for the oldest
  release the examples claim and the newest one the package knows.
- KongClusterPlugin: against the openAPIV3Schema of Kong's CRD, checked in at tests/kubernetes/ with its source
  (made strict the same way: unknown fields are errors where the CRD does not preserve them), its creation-time
  CEL rules written out here, and the plugin's own configuration against Kong's plugin schemas (http-log,
  tcp-log and the queue: field names, required fields, ranges), which the CRD leaves open.
- References: selectors select pods, named ports exist, a StatefulSet's serviceName is a headless Service,
  mounts name volumes, every Secret and key referred to is defined in the examples, the plugin's endpoint is the
  Service, and the aggregator's `kong-ship receive` flags are the command's own.

A deliberately broken copy of each kind of mistake must fail (the last tests)."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import re
import shutil
import socket
import time
from urllib.parse import urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ship_env, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "kubernetes"
CRD = pathlib.Path(__file__).resolve().parent / "kubernetes" / "configuration.konghq.com_kongclusterplugins.yaml"
# The oldest Kubernetes the examples are written for (StatefulSet's persistentVolumeClaimRetentionPolicy is on by
# default from 1.27), and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# Kong's plugin schemas (Kong 3.x): kong/plugins/http-log/schema.lua, kong/plugins/tcp-log/schema.lua and the
# queue every queued plugin shares, kong/tools/queue_schema.lua (ranges as declared there).
HTTP_LOG_FIELDS = {"http_endpoint", "method", "content_type", "timeout", "keepalive", "retry_count", "queue_size",
                   "flush_timeout", "headers", "queue", "custom_fields_by_lua"}
HTTP_LOG_METHODS = {"POST", "PUT", "PATCH"}
HTTP_LOG_CONTENT_TYPES = {"application/json", "application/json; charset=utf-8"}
HTTP_LOG_FORBIDDEN_HEADERS = {"host", "content-length", "content-type"}
TCP_LOG_FIELDS = {"host", "port", "timeout", "keepalive", "tls", "tls_sni", "ssl_verify", "custom_fields_by_lua"}
QUEUE_FIELDS = {  # name: (type, lowest, highest)
    "max_batch_size": (int, 1, 1_000_000),
    "max_coalescing_delay": ((int, float), 0, 3600),
    "max_entries": (int, 1, 1_000_000),
    "max_bytes": (int, 1, None),
    "max_retry_time": ((int, float), -1, None),
    "initial_retry_delay": ((int, float), 0.001, 1_000_000),
    "max_retry_delay": ((int, float), 0.001, 1_000_000),
    "concurrency_limit": (int, -1, 1),
}


# ---------------------------------------------------------------------------------------------------- loading

def load(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def commented_alternatives(path: pathlib.Path) -> list[dict]:
    """The documents an example shows commented out after a `# ---` line (aggregator.yaml's tcp-log plugin), so
    that what a reader uncomments is checked too."""
    out, lines, inside = [], [], False
    for line in path.read_text().splitlines():
        if line.rstrip() == "# ---":
            if lines:
                out.append(yaml.safe_load("\n".join(lines)))
            lines, inside = [], True
        elif inside and (line.startswith("# ") or line == "#"):
            lines.append(line[2:])
        elif inside:
            inside = False
    if lines:
        out.append(yaml.safe_load("\n".join(lines)))
    return [doc for doc in out if isinstance(doc, dict)]


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def namespace_of(doc: dict) -> str:
    return doc.get("metadata", {}).get("namespace") or "default"


# ------------------------------------------------------------------------------------------- schema validation

def kubernetes_problems(doc: dict, version: str) -> list[str]:
    return list(_kubernetes_problems(json.dumps(doc, sort_keys=True), version))


@functools.lru_cache(maxsize=None)
def _kubernetes_problems(text: str, version: str) -> tuple[str, ...]:
    """Cached: the broken copies differ from the examples in one document, and each validation reads the
    release's definitions anew (a second or so)."""
    doc = json.loads(text)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        return (f"{name_of(doc)}: Kubernetes {version} schema: {path}: {exc.message}",)
    except kubernetes_validate.SchemaNotFoundError:
        return (f"{name_of(doc)}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {version}",)
    return ()


def _strict(schema: dict) -> dict:
    """An openAPIV3Schema as kubectl's strict field validation applies it: an object with declared properties
    takes no others, unless the CRD preserves unknown fields there."""
    schema = dict(schema)
    if schema.get("type") == "object" and "properties" in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for key in ("properties",):
        if key in schema:
            schema[key] = {k: _strict(v) for k, v in schema[key].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    return schema


def _crd_version() -> dict:
    (crd,) = load(CRD)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "KongClusterPlugin"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version


CRD_SCHEMA = _strict(_crd_version()["schema"]["openAPIV3Schema"])
# The CRD's x-kubernetes-validations (CEL, which jsonschema does not run), each as Python. The third rule
# (the plugin field is immutable) is about updates, not a manifest: there is nothing to check in a file.
CEL_RULES = {
    "!(has(self.config) && has(self.configFrom))": lambda d: not ("config" in d and "configFrom" in d),
    "!(has(self.configFrom) && has(self.configPatches))": lambda d: not ("configFrom" in d and "configPatches" in d),
    "self.plugin == oldSelf.plugin": lambda d: True,
}


def crd_problems(doc: dict) -> list[str]:
    problems = [f"{name_of(doc)}: KongClusterPlugin CRD: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft7Validator(CRD_SCHEMA).iter_errors(doc)]
    for rule in _crd_version()["schema"]["openAPIV3Schema"].get("x-kubernetes-validations", []):
        if not CEL_RULES[rule["rule"]](doc):
            problems.append(f"{name_of(doc)}: KongClusterPlugin CRD rule: {rule['message']}")
    meta = doc.get("metadata", {})
    if not DNS_SUBDOMAIN.match(str(meta.get("name", ""))):
        problems.append(f"{name_of(doc)}: metadata.name is not a DNS subdomain")
    if "namespace" in meta:
        problems.append(f"{name_of(doc)}: a KongClusterPlugin is cluster-scoped: no metadata.namespace")
    if "kubernetes.io/ingress.class" not in meta.get("annotations", {}):
        problems.append(f"{name_of(doc)}: the Kong Ingress Controller ignores a KongClusterPlugin without the "
                        f"kubernetes.io/ingress.class annotation")
    return problems + kong_plugin_problems(doc)


def kong_plugin_problems(doc: dict) -> list[str]:
    """The plugin's `config` against Kong's own schema for that plugin (the CRD takes any object there)."""
    who, config, plugin = name_of(doc), doc.get("config", {}), doc.get("plugin")
    patched = {p["path"] for p in doc.get("configPatches", [])}
    problems = []
    if plugin == "http-log":
        problems += [f"{who}: http-log has no field {k!r}" for k in sorted(set(config) - HTTP_LOG_FIELDS)]
        if "http_endpoint" not in config and "/http_endpoint" not in patched:
            problems.append(f"{who}: http-log needs http_endpoint")
        if config.get("method", "POST") not in HTTP_LOG_METHODS:
            problems.append(f"{who}: http-log method must be one of {sorted(HTTP_LOG_METHODS)}")
        if config.get("content_type", "application/json") not in HTTP_LOG_CONTENT_TYPES:
            problems.append(f"{who}: http-log content_type must be one of {sorted(HTTP_LOG_CONTENT_TYPES)}")
        headers = set(config.get("headers") or {}) | {p.split("/", 2)[2] for p in patched if p.startswith("/headers/")}
        problems += [f"{who}: http-log headers cannot contain {h!r}" for h in sorted(headers)
                     if h.lower() in HTTP_LOG_FORBIDDEN_HEADERS]
        for key, value in (config.get("queue") or {}).items():
            if key not in QUEUE_FIELDS:
                problems.append(f"{who}: Kong's queue has no field {key!r}")
                continue
            kind, low, high = QUEUE_FIELDS[key]
            if isinstance(value, bool) or not isinstance(value, kind) \
                    or value < low or (high is not None and value > high):
                problems.append(f"{who}: queue.{key} = {value!r}: expected a number from {low} to {high or 'any'}")
    elif plugin == "tcp-log":
        problems += [f"{who}: tcp-log has no field {k!r}" for k in sorted(set(config) - TCP_LOG_FIELDS)]
        problems += [f"{who}: tcp-log needs {k}" for k in ("host", "port") if k not in config]
        port = config.get("port")
        if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
            problems.append(f"{who}: tcp-log port {port!r} is not a port")
    else:
        problems.append(f"{who}: no check for the {plugin!r} plugin's config here: add one")
    for path in sorted(patched):  # a JSON patch "add" needs the parent to exist in config
        parent = path.rsplit("/", 1)[0]
        if parent and parent.strip("/") not in config:
            problems.append(f"{who}: configPatches path {path}: config has no {parent.strip('/')!r} to add it to")
    return problems


def schema_problems(doc: dict) -> list[str]:
    if doc.get("kind") == "KongClusterPlugin" and doc.get("apiVersion") == "configuration.konghq.com/v1":
        return crd_problems(doc)
    return [p for version in K8S_VERSIONS for p in kubernetes_problems(doc, version)]


# ------------------------------------------------------------------------------------------------- references

def _pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def _pod_labels(doc: dict) -> dict:
    return doc["spec"]["template"].get("metadata", {}).get("labels", {})


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _containers(doc: dict) -> list[dict]:
    spec = _pod_spec(doc)
    return spec.get("initContainers", []) + spec.get("containers", [])


def _secret_refs(doc: dict):
    """(namespace, secret name, key or None) for every Secret a workload or plugin refers to."""
    ns = namespace_of(doc)
    if doc.get("kind") == "KongClusterPlugin":
        for patch in doc.get("configPatches", []):
            ref = patch["valueFrom"]["secretKeyRef"]
            yield ref["namespace"], ref["name"], ref["key"]
        if "configFrom" in doc:
            ref = doc["configFrom"]["secretKeyRef"]
            yield ref["namespace"], ref["name"], ref["key"]
        return
    for container in _containers(doc):
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield ns, source["secretRef"]["name"], None
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ns, ref["name"], ref["key"]
    for volume in _pod_spec(doc).get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items") or [{"key": None}]
            for item in items:
                yield ns, volume["secret"]["secretName"], item["key"]


def reference_problems(docs: list[dict], all_docs: list[dict]) -> list[str]:
    """Within one file, except Secrets: those may come from another example (sidecar.yaml uses daemonset.yaml's)."""
    problems = []
    workloads = [d for d in docs if d.get("kind") in WORKLOADS]
    services = [d for d in docs if d.get("kind") == "Service"]
    secrets = {(namespace_of(d), d["metadata"]["name"]): set(d.get("stringData", {})) | set(d.get("data", {}))
               for d in all_docs if d.get("kind") == "Secret"}

    for doc in workloads:
        who, spec = name_of(doc), _pod_spec(doc)
        if not _selects(doc["spec"]["selector"]["matchLabels"], _pod_labels(doc)):
            problems.append(f"{who}: spec.selector does not select its own pod template")
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        mounted = set()
        for container in _containers(doc):
            ports = {p.get("name") for p in container.get("ports", [])} | {p["containerPort"] for p in container.get("ports", [])}
            for mount in container.get("volumeMounts", []):
                mounted.add(mount["name"])
                if mount["name"] not in volumes:
                    problems.append(f"{who}: container {container['name']} mounts {mount['name']!r}, which is no volume")
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name, {})
                for action in ("tcpSocket", "httpGet"):
                    if action in probe and probe[action]["port"] not in ports:
                        problems.append(f"{who}: {probe_name} port {probe[action]['port']!r} is not a container port")
        problems += [f"{who}: volume {v!r} is mounted nowhere" for v in sorted(volumes - mounted)]
        if doc["kind"] == "StatefulSet":
            headless = [s for s in services if s["metadata"]["name"] == doc["spec"].get("serviceName")]
            if not headless or headless[0]["spec"].get("clusterIP") != "None":
                problems.append(f"{who}: serviceName {doc['spec'].get('serviceName')!r} is not a headless Service here")

    for doc in services + [d for d in docs if d.get("kind") == "PodDisruptionBudget"]:
        who = name_of(doc)
        selector = doc["spec"].get("selector", {})
        selector = selector.get("matchLabels", selector) if doc["kind"] == "PodDisruptionBudget" else selector
        chosen = [w for w in workloads if namespace_of(w) == namespace_of(doc) and _selects(selector, _pod_labels(w))]
        if not chosen:
            problems.append(f"{who}: its selector matches no pods in this file")
        if doc["kind"] == "Service":
            names = {p.get("name") for w in chosen for c in _pod_spec(w)["containers"] for p in c.get("ports", [])}
            numbers = {p["containerPort"] for w in chosen for c in _pod_spec(w)["containers"] for p in c.get("ports", [])}
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if target not in (names if isinstance(target, str) else numbers):
                    problems.append(f"{who}: targetPort {target!r} is no port of the pods it selects")

    for doc in docs:
        if doc.get("kind") not in WORKLOADS | {"KongClusterPlugin"}:
            continue
        for ns, name, key in _secret_refs(doc):
            if (ns, name) not in secrets:
                problems.append(f"{name_of(doc)}: Secret {ns}/{name} is not defined in the examples")
            elif key is not None and key not in secrets[ns, name]:
                problems.append(f"{name_of(doc)}: Secret {ns}/{name} has no key {key!r}")

    for doc in [d for d in docs if d.get("kind") == "KongClusterPlugin"]:
        problems += endpoint_problems(doc, services)
    return problems


def endpoint_problems(plugin: dict, services: list[dict]) -> list[str]:
    """The plugin sends to a Service of the same file, on one of its ports (http-log at /http-log)."""
    config = plugin.get("config", {})
    if plugin.get("plugin") == "http-log":
        url = urlsplit(config.get("http_endpoint", ""))
        host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
        if url.path != "/http-log":
            return [f"{name_of(plugin)}: http_endpoint path is {url.path!r}, kong-ship receive serves /http-log"]
    else:
        host, port = config.get("host", ""), config.get("port")
    for service in services:
        dns = f"{service['metadata']['name']}.{namespace_of(service)}.svc.cluster.local"
        if host in (dns, dns.removesuffix(".cluster.local")):
            if port in {p["port"] for p in service["spec"]["ports"]}:
                return []
            # a commented alternative may use a port that is commented out in the Service too
            return [f"{name_of(plugin)}: port {port} is not a port of Service {service['metadata']['name']}"]
    return [f"{name_of(plugin)}: {host!r} is no Service of this file"]


def check(directory: pathlib.Path) -> list[str]:
    """Every problem of every manifest in the directory, each naming its file."""
    files = sorted(directory.glob("*.yaml"))
    assert files, f"no manifests in {directory}"
    loaded = {path: load(path) for path in files}
    all_docs = [doc for docs in loaded.values() for doc in docs]
    problems = []
    for path, docs in loaded.items():
        for doc in docs:
            problems += [f"{path.name}: {p}" for p in schema_problems(doc)]
        problems += [f"{path.name}: {p}" for p in reference_problems(docs, all_docs)]
    return problems


# ---------------------------------------------------------------------------------------------------- the tests

def test_every_manifest_passes_the_schemas_and_its_references_hold():
    assert check(EXAMPLES) == []


def test_the_commented_tcp_log_alternative_is_a_valid_kong_cluster_plugin():
    (alternative,) = commented_alternatives(EXAMPLES / "aggregator.yaml")
    assert alternative["plugin"] == "tcp-log" and alternative["config"]["tls"] is True
    assert crd_problems(alternative) == []
    # Its port is the one the commented tcp-log lines of the Service and the StatefulSet open.
    text = (EXAMPLES / "aggregator.yaml").read_text()
    port = alternative["config"]["port"]
    assert f"# - {{name: tcp-log, port: {port}, targetPort: tcp-log" in text
    assert f"# - --listen-tcp=:{port}" in text and f"# - {{name: tcp-log, containerPort: {port}" in text


def test_the_crd_checked_in_is_the_one_the_rules_here_cover():
    rules = [r["rule"] for r in _crd_version()["schema"]["openAPIV3Schema"].get("x-kubernetes-validations", [])]
    assert rules and set(rules) <= set(CEL_RULES), f"the CRD has rules this test does not run: {rules}"
    # The CRD itself is a valid CustomResourceDefinition.
    assert [p for v in K8S_VERSIONS for p in kubernetes_problems(load(CRD)[0], v)] == []


def _aggregator() -> dict[str, dict]:
    return {doc["kind"] + "/" + doc["metadata"]["name"]: doc for doc in load(EXAMPLES / "aggregator.yaml")}


def unknown_receive_flags(path: pathlib.Path) -> list[str]:
    """The StatefulSet's `kong-ship receive` flags, the commented ones too (what a reader uncomments must work
    as well), that the command does not have."""
    from shipper.commands.receive import receive

    known = {opt for param in receive.params for opt in param.opts}
    sts = next(d for d in load(path) if d.get("kind") == "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "receive"
    flags = [arg.split("=", 1)[0] for arg in container["args"][1:]]
    flags += re.findall(r"^\s*# - (--[a-z-]+)", path.read_text(), flags=re.M)
    assert flags
    return [f for f in flags if f not in known]


def test_the_aggregator_runs_receive_with_flags_the_command_has(tmp_path):
    assert unknown_receive_flags(EXAMPLES / "aggregator.yaml") == []
    broken = tmp_path / "aggregator.yaml"
    text = (EXAMPLES / "aggregator.yaml").read_text()
    broken.write_text(text.replace("- --http-log-token-file=", "- --http-log-token=").replace("# - --tls-key=", "# - --tls-keyfile="))
    assert unknown_receive_flags(broken) == ["--http-log-token", "--tls-keyfile"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_aggregators_own_arguments_run_a_real_receive(tmp_path, shippers):
    """The StatefulSet's args as they are, but on loopback ports, tmp paths and --sink stdout (no Segment here):
    Kong's http-log batch with the Secret's token is answered 200 and shipped, a wrong token 401, both probes
    answer, and SIGTERM ends it with exit 0 well within the grace period."""
    objects = _aggregator()
    secret = objects["Secret/kong-ship-aggregator"]["stringData"]
    pod = objects["StatefulSet/kong-ship-aggregator"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    files = {"/etc/kong-ship/secrets/" + key: tmp_path / key for key in secret}
    for key, path in files.items():
        path.write_text(secret[key.rsplit("/", 1)[1]])
    http_port, metrics_port = _free_port(), _free_port()
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        if flag in ("--sink", "--segment-write-key-file"):
            continue
        value = files.get(value, value)
        value = {":8080": f"127.0.0.1:{http_port}", ":9464": f"127.0.0.1:{metrics_port}",
                 "/var/lib/kong-ship": tmp_path / "state"}.get(value, value)
        args.append(f"{flag}={value}" if _ else flag)
    proc = shippers(*args, "--sink=stdout", env=ship_env())
    record = json.loads((ROOT / "examples" / "kong-3x.jsonl").read_text().splitlines()[0])
    url = f"http://127.0.0.1:{http_port}/http-log"

    def post(token: str) -> httpx.Response | None:
        try:
            return httpx.post(url, json=[record] * 3, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        except httpx.TransportError:
            return None

    answer = wait_until(lambda: post(secret["http-log-token"]), timeout=20)
    assert answer is not None and answer.status_code == 200, (answer, proc.proc.poll())
    assert post("wrong").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{metrics_port}{container['livenessProbe']['httpGet']['path']}").status_code == 200
    socket.create_connection(("127.0.0.1", http_port), timeout=2).close()  # the readiness probe
    time.sleep(1)
    started = time.monotonic()
    code, out, err = proc.stop(timeout=pod["terminationGracePeriodSeconds"])
    assert code == 0, err
    assert time.monotonic() - started < pod["terminationGracePeriodSeconds"] - 10
    assert len(out.splitlines()) == 3, out


def test_the_aggregator_is_hardened_durable_and_stops_gracefully():
    objects = _aggregator()
    sts = objects["StatefulSet/kong-ship-aggregator"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = dict(arg.split("=", 1) for arg in container["args"][1:] if "=" in arg)
    # The spool and checkpoints are on the claim template's volume, kept when scaled down.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[claim["metadata"]["name"]] == args["--state-dir"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    # Non-root, read-only root file system, no capabilities, everywhere.
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"] + pod.get("initContainers", []):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert "limits" in c["resources"] and "requests" in c["resources"], c["name"]
    # SIGTERM: the pause before it plus --shutdown-timeout fit in the grace period.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + float(args["--shutdown-timeout"])
    # Secrets as files, never as literal flags.
    assert args["--http-log-token-file"].startswith("/etc/kong-ship/secrets/")
    assert args["--segment-write-key-file"].startswith("/etc/kong-ship/secrets/")
    # The liveness probe is the metrics endpoint kong-ship serves.
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics" and args["--metrics-addr"].endswith(":9464")
    # A PodDisruptionBudget keeps a replica for Kong to retry against.
    assert objects["PodDisruptionBudget/kong-ship-aggregator"]["spec"]["maxUnavailable"] == 1
    # The plugin: batches, a bearer token from the Secret, the body size within --max-body-bytes' reach.
    plugin = objects["KongClusterPlugin/kong-ship-http-log"]
    assert plugin["config"]["queue"]["max_batch_size"] > 1
    (patch,) = plugin["configPatches"]
    assert patch["path"] == "/headers/Authorization"
    secret = objects["Secret/kong-ship-aggregator"]["stringData"]
    assert yaml.safe_load(secret[patch["valueFrom"]["secretKeyRef"]["key"]]) == "Bearer " + secret["http-log-token"]


# ------------------------------------------------------------------------------- a broken copy must fail

BREAKAGES = [
    # (what is replaced, by what, what the problem must say)
    ("containerPort: 8080", "containerPort: eighty", "Kubernetes 1.29 schema"),
    ("  volumeClaimTemplates:", "  volumeClaimTemplate:", "volumeClaimTemplate"),
    ("plugin: http-log\n", "", "'plugin' is a required property"),
    ("plugin: http-log\n", "plugin: http-log\nconfigFrom:\n  secretKeyRef: {name: a, namespace: b, key: c}\n",
     "Using both config and configFrom"),
    ("  labels:\n    global: \"true\"\nplugin", "  namespace: kong\n  labels:\n    global: \"true\"\nplugin", "cluster-scoped"),
    ("    max_batch_size: 200", "    max_batch_size: 0", "queue.max_batch_size = 0"),
    ("    max_batch_size: 200", "    batch_size: 200", "queue has no field 'batch_size'"),
    ("  method: POST", "  method: GET", "method must be one of"),
    ("/http-log\n  method", "/\n  method", "serves /http-log"),
    ("port: 8080, targetPort: http-log", "port: 8080, targetPort: http", "targetPort 'http'"),
    ("  selector: {app.kubernetes.io/name: kong-ship-aggregator}\n  ports:\n    - {name: http-log, port: 8080, targetPort: http-log, protocol: TCP}\n    # tcp",
     "  selector: {app: nothing}\n  ports:\n    - {name: http-log, port: 8080, targetPort: http-log, protocol: TCP}\n    # tcp",
     "matches no pods"),
    ("serviceName: kong-ship-aggregator-headless", "serviceName: kong-ship-aggregator", "not a headless Service"),
    ("{name: spool, mountPath", "{name: spoool, mountPath", "'spoool', which is no volume"),
    ("key: kong-authorization}", "key: kong-authorisation}", "no key 'kong-authorisation'"),
    ("  segment-write-key: \"replace-me\"\n", "", "no key 'segment-write-key'"),
    ("port: 8080, targetPort", "port: 8081, targetPort", "port 8080 is not a port of Service"),
]


@pytest.mark.parametrize("old, new, expected", BREAKAGES, ids=[b[2] for b in BREAKAGES])
def test_a_broken_copy_fails(tmp_path, old, new, expected):
    for path in EXAMPLES.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    text = (tmp_path / "aggregator.yaml").read_text()
    assert text.count(old) >= 1, f"the breakage no longer applies: {old!r}"
    (tmp_path / "aggregator.yaml").write_text(text.replace(old, new, 1))
    problems = check(tmp_path)
    assert any(expected in p and p.startswith("aggregator.yaml: ") for p in problems), problems


def test_a_kind_with_no_schema_fails(tmp_path):
    (tmp_path / "x.yaml").write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    assert any("no schema for example.com/v1 Widget" in p for p in check(tmp_path))


def test_the_commented_alternative_is_checked_when_broken():
    (alternative,) = commented_alternatives(EXAMPLES / "aggregator.yaml")
    broken = copy.deepcopy(alternative)
    del broken["config"]["host"]
    assert any("tcp-log needs host" in p for p in crd_problems(broken))
