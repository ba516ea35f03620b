#!/usr/bin/python3
"""The deployment assets (deploy/docker/, deploy/k8s/) checked against the
code, since no Docker engine or cluster runs in CI (docs/deploy.md):

- every YAML file under deploy/ parses;
- the Compose file and every rendered kustomize overlay use only flags and
  KINFER_* variables of `kinfer-worker --help`, and the worker accepts them
  with those values (`kinfer-worker --print-config` with the very
  environment and arguments, which refuses a bad value with exit 2); every
  `-X` property is one librdkafka knows (confluent_kafka builds a consumer
  with it, offline);
- probe and HEALTHCHECK paths are routes of worker/endpoint.c, probe ports
  are the port the worker's --http listens on, grace periods outlast
  --grace-ms, the Redis policy never evicts, KEDA triggers use only the
  fields KEDA documents (https://keda.sh/docs/2.15/scalers/apache-kafka/,
  .../prometheus/) and name the worker's group, topic and metrics, and no
  autoscaler goes past the topic's partitions;
- the Dockerfile: pinned Debian bookworm bases, a non-root USER in every
  image, a HEALTHCHECK in the worker's, COPY sources that exist, binaries the
  Makefile builds, and a runtime apt list that provides every library the
  binaries link (readelf NEEDED -> dpkg -S);
- shellcheck (-S warning) on every shell script under deploy/;
- `kubectl kustomize` renders every overlay (Debian's kubectl 1.20, offline).

Each check is a function returning a list of problems; BrokenAssetsTest
feeds each one a deliberately broken copy and wants a problem named.

    KINFER_BIN=build /usr/bin/python3 tests/py/test_deploy_assets.py
"""
import copy
import functools
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
DEPLOY = os.path.join(REPO, "deploy")
DOCKERFILE = os.path.join(DEPLOY, "docker", "Dockerfile")
COMPOSE = os.path.join(DEPLOY, "docker", "docker-compose.yml")
OVERLAYS = sorted(glob.glob(os.path.join(DEPLOY, "k8s", "overlays", "*")))

# Fields KEDA documents (v2.15, kedacore/keda-docs content/docs/2.15/:
# reference/scaledobject-spec.md, scalers/apache-kafka.md,
# scalers/prometheus.md): the ScaledObject spec, and the trigger metadata of
# the two scalers used here.  `topic` is optional for KEDA but required
# here: without it, a group that never committed is invisible to the scaler
# at zero replicas (the scaler page's own warning).
KEDA_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
             "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
             "triggers"}
KEDA_TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef",
                "metricType"}
KEDA_META = {
    "kafka": ({"bootstrapServers", "consumerGroup", "topic"},
              {"bootstrapServers", "consumerGroup", "topic", "lagThreshold",
               "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
               "scaleToZeroOnInvalidOffset", "excludePersistentLag", "version",
               "partitionLimitation", "sasl", "saslTokenProvider", "tls", "unsafeSsl",
               "limitToPartitionsWithLag", "awsRegion"}),
    "prometheus": ({"serverAddress", "query", "threshold"},
                   {"serverAddress", "query", "queryParameters", "threshold",
                    "activationThreshold", "namespace", "cortexOrgID", "customHeaders",
                    "ignoreNullValues", "unsafeSsl", "authModes"}),
}


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def worker_help():
    """(flags, env names) of `kinfer-worker --help`."""
    out = subprocess.run([os.path.join(BIN, "kinfer-worker"), "--help"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    flags = set(re.findall(r"(?:^|\s)(--[a-z][a-z0-9-]*|-[a-zA-Z])\b", out))
    envs = set(re.findall(r"\[env (KINFER_[A-Z0-9_]+)\]", out))
    return flags, envs


@functools.lru_cache(maxsize=None)
def endpoint_routes():
    return set(re.findall(r'\{"(/[a-z]+)",', read(os.path.join(REPO, "worker", "endpoint.c"))))


@functools.lru_cache(maxsize=None)
def worker_metrics():
    src = read(os.path.join(REPO, "worker", "metrics.c"))
    return set(re.findall(r'"(kinfer_[a-z_]+)', src))


def print_config(env, args):
    """The worker's effective configuration for this environment and these
    arguments, or a problem string."""
    p = subprocess.run([os.path.join(BIN, "kinfer-worker")] + list(args) + ["--print-config"],
                       capture_output=True, text=True, timeout=30,
                       env=dict(env, PATH=os.environ.get("PATH", "")))
    if p.returncode != 0:
        return f"kinfer-worker refuses it (exit {p.returncode}): {p.stderr.strip()}"
    return json.loads(p.stdout)


def check_worker_settings(where, env, args, port=None, stop_seconds=None):
    """Flags and variables exist and the worker accepts their values; -X
    properties are librdkafka's; the endpoint listens on `port`; the time
    before SIGKILL outlasts the drain."""
    problems = []
    flags, envs = worker_help()
    for name in env:
        if name.startswith("KINFER_") and name not in envs:
            problems.append(f"{where}: {name} is not a variable of kinfer-worker --help")
    props = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-X" and i + 1 < len(args):
            k, _, v = args[i + 1].partition("=")
            props[k] = v
            i += 2
            continue
        if a.startswith("-") and a.split("=")[0] not in flags:
            problems.append(f"{where}: {a} is not a flag of kinfer-worker --help")
        i += 1
    if props:
        import confluent_kafka
        try:
            confluent_kafka.Consumer(dict(props, **{"group.id": "deploy-assets-check"})).close()
        except (confluent_kafka.KafkaException, ValueError) as e:
            problems.append(f"{where}: -X {props}: librdkafka refuses it: {e}")
    if problems:
        return problems
    cfg = print_config({k: str(v) for k, v in env.items()}, args)
    if isinstance(cfg, str):
        return [f"{where}: {cfg}"]
    if port is not None:
        if not cfg.get("http"):
            problems.append(f"{where}: no --http/KINFER_HTTP, so no probes and no /metrics")
        elif cfg["http"].rpartition(":")[2] != str(port):
            problems.append(f"{where}: the worker listens on {cfg['http']}, the probes and "
                            f"ports say {port}")
    if stop_seconds is not None and stop_seconds < cfg["grace-ms"] / 1000 + 10:
        problems.append(f"{where}: {stop_seconds} s before SIGKILL, but the worker may drain "
                        f"for --grace-ms {cfg['grace-ms']} ms plus its commit: give it "
                        f">= {cfg['grace-ms'] // 1000 + 10} s")
    return problems


def seconds(text):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(text))
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0) if m else 0


def dockerfile_stages(text):
    """{stage: {"from": base, "user": ..., "healthcheck": ..., "copies": [...],
    "apt": [...], "entrypoint": ...}} with USER inherited from a parent stage."""
    stages, cur = {}, None
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base, name = m.group(1), m.group(2) or f"stage{len(stages)}"
            parent = stages.get(base)
            cur = stages[name] = {"from": base, "user": parent["user"] if parent else None,
                                  "healthcheck": None, "copies": [], "apt": [],
                                  "entrypoint": None, "run": []}
        elif op == "USER":
            cur["user"] = rest.strip()
        elif op == "HEALTHCHECK":
            cur["healthcheck"] = rest
        elif op == "COPY":
            cur["copies"].append(rest.split())
        elif op == "ENTRYPOINT":
            cur["entrypoint"] = json.loads(rest)
        elif op == "RUN":
            cur["run"].append(rest)
            m = re.search(r"apt-get install ([^&;]*)", rest)
            if m:
                cur["apt"] += [w for w in m.group(1).split() if not w.startswith("-")]
    return stages


def check_dockerfile(text):
    problems = []
    stages = dockerfile_stages(text)
    for name, st in stages.items():
        if st["from"] in stages:
            continue
        if not re.fullmatch(r"debian:bookworm[-\w.]*(@sha256:[0-9a-f]{64})?", st["from"]):
            problems.append(f"stage {name}: base {st['from']} is not a pinned Debian bookworm "
                            "image (no tag, latest, or another release)")
        if st["apt"] and "--no-install-recommends" not in " ".join(st["run"]):
            problems.append(f"stage {name}: apt-get install without --no-install-recommends")
        if st["apt"] and "rm -rf /var/lib/apt/lists" not in " ".join(st["run"]):
            problems.append(f"stage {name}: apt lists left in the image")
    made = set(re.findall(r"^BINS = (.*)$", read(os.path.join(REPO, "Makefile")), re.M)[0]
               .replace("$(BUILD)/", "build/").split())
    for want in ("worker", "cli"):
        st = stages.get(want)
        if not st:
            problems.append(f"no stage '{want}' (Compose and the docs build it)")
            continue
        user = (st["user"] or "root").split(":")[0]
        if user in ("root", "0"):
            problems.append(f"stage {want}: runs as root (no USER, or USER root)")
        if not st["entrypoint"]:
            problems.append(f"stage {want}: no ENTRYPOINT")
        installed = {}
        for c in st["copies"]:
            src, dst = c[-2], c[-1]
            if c[0].startswith("--from="):
                if "/build/" not in src or "build/" + os.path.basename(src) not in made:
                    problems.append(f"stage {want}: copies {src}, which the Makefile does "
                                    "not build")
            elif not os.path.exists(os.path.join(REPO, src)):
                problems.append(f"stage {want}: COPY {src}: no such file in the repository")
            installed[dst] = src
        if st["entrypoint"] and st["entrypoint"][0] not in installed:
            problems.append(f"stage {want}: ENTRYPOINT {st['entrypoint'][0]} is not copied in")
    hc = stages.get("worker", {}).get("healthcheck")
    if not hc:
        problems.append("stage worker: no HEALTHCHECK")
    else:
        paths = set(re.findall(r'"(/[a-z]+)"', hc)) | set(re.findall(r"\s(/[a-z]+)\b", hc))
        probe = [p for p in paths if p in ("/healthz", "/readyz")]
        if not probe or not set(probe) <= endpoint_routes():
            problems.append(f"stage worker: HEALTHCHECK checks none of the endpoint's "
                            f"{sorted(endpoint_routes())}: {hc}")
    return problems


def check_runtime_libraries(text):
    """Every library the binaries link directly comes from a package the
    runtime stage installs (or libc6)."""
    problems = []
    runtime = dockerfile_stages(text).get("runtime", {"apt": []})
    have = set(runtime["apt"]) | {"libc6"}
    for prog in ("kinfer-worker", "kinfer"):
        path = os.path.join(BIN, prog)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                            subprocess.run(["readelf", "-d", path], capture_output=True,
                                           text=True, check=True).stdout)
        ldd = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(
            ["ldd", path], capture_output=True, text=True, check=True).stdout, re.M))
        for lib in needed:
            if lib not in ldd:
                continue
            real = os.path.realpath(ldd[lib])
            pkg = None
            for candidate in (ldd[lib], real):
                p = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
                if p.returncode == 0:
                    pkg = p.stdout.split(":")[0]
                    break
            if pkg and pkg not in have:
                problems.append(f"{prog} links {lib} (Debian package {pkg}), which the "
                                "runtime stage does not install")
    return problems


def check_compose(doc, dockerfile_text):
    problems = []
    services = doc.get("services", {})
    stages = dockerfile_stages(dockerfile_text)
    kafka = services.get("kafka", {})
    if not str(kafka.get("image", "")).startswith("apache/kafka:"):
        problems.append("kafka: not the official apache/kafka image")
    env = kafka.get("environment", {})
    if "broker" not in str(env.get("KAFKA_PROCESS_ROLES", "")) or \
            "controller" not in str(env.get("KAFKA_PROCESS_ROLES", "")):
        problems.append("kafka: not KRaft broker+controller (KAFKA_PROCESS_ROLES)")
    init = " ".join(map(str, services.get("kafka-init", {}).get("command", [])))
    if "--create" not in init or "kinfer.jobs" not in init or "--partitions" not in init:
        problems.append("kafka-init: does not create kinfer.jobs with a partition count")
    redis_cmd = [str(w) for w in services.get("redis", {}).get("command", [])]
    policy = redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] \
        if "--maxmemory-policy" in redis_cmd else "noeviction"
    if policy != "noeviction":
        problems.append(f"redis: --maxmemory-policy {policy} may evict charge records and "
                        "results (they all have a TTL: docs/protocol.md), so a redelivered "
                        "job could be charged twice")
    if "--maxmemory" not in redis_cmd:
        problems.append("redis: no --maxmemory")
    for name in ("worker", "demo"):
        svc = services.get(name, {})
        target = svc.get("build", {}).get("target")
        if target not in stages:
            problems.append(f"{name}: build target {target} is not a stage of the Dockerfile")
        if svc.get("build", {}).get("dockerfile") != "deploy/docker/Dockerfile":
            problems.append(f"{name}: builds another Dockerfile")
    w = services.get("worker", {})
    if "container_name" in w or "ports" in w:
        problems.append("worker: container_name or host ports stop `--scale worker=N`")
    wenv = {k: str(v) for k, v in w.get("environment", {}).items()}
    port = str(w.get("expose", ["?"])[0])
    problems += check_worker_settings("compose worker", wenv, [str(a) for a in
                                                               w.get("command", [])],
                                      port=port, stop_seconds=seconds(
                                          w.get("stop_grace_period", "10s")))
    demo = services.get("demo", {})
    entry = demo.get("entrypoint", [""])[0]
    cli_copies = [c[-1] for c in stages.get("cli", {}).get("copies", [])]
    if entry not in cli_copies:
        problems.append(f"demo: entrypoint {entry} is not in the cli image")
    return problems


def render(overlay, kubectl="kubectl"):
    p = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True,
                       timeout=60)
    if p.returncode != 0:
        return f"kubectl kustomize {overlay}: {p.stderr.strip()}"
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def check_k8s(where, docs, partitions):
    problems = []
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    dep = by.get(("Deployment", "kinfer-worker"))
    if not dep:
        return [f"{where}: no Deployment kinfer-worker"]
    spec = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    c = spec["containers"][0]
    env = {}
    for ref in c.get("envFrom", []):
        kind = "ConfigMap" if "configMapRef" in ref else "Secret"
        src = by.get((kind, (ref.get("configMapRef") or ref.get("secretRef"))["name"]))
        if not src:
            problems.append(f"{where}: envFrom names a {kind} the overlay does not have")
            continue
        env.update(src.get("data", {}) if kind == "ConfigMap" else src.get("stringData", {}))
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "kinfer-worker-5d9c7b-x2x4k")  # a fieldRef: a pod name
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    probe_ports = set()
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c.get(kind, {}).get("httpGet")
        if not probe:
            problems.append(f"{where}: no {kind} with httpGet")
            continue
        if probe["path"] not in endpoint_routes():
            problems.append(f"{where}: {kind} path {probe['path']} is not a route of "
                            f"worker/endpoint.c {sorted(endpoint_routes())}")
        probe_ports.add(ports.get(probe["port"], probe["port"]))
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/readyz":
        problems.append(f"{where}: liveness on /readyz restarts workers whenever Redis is down")
    if len(probe_ports) > 1:
        problems.append(f"{where}: probes on several ports {probe_ports}")
    prestop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = sum(int(x) for x in re.findall(r"sleep (\d+)", " ".join(prestop)))
    grace = spec.get("terminationGracePeriodSeconds", 30) - sleep
    problems += check_worker_settings(f"{where} Deployment", env, c.get("args", []),
                                      port=next(iter(probe_ports), None), stop_seconds=grace)
    if "KINFER_INSTANCE_ID" not in {e["name"] for e in c.get("env", [])}:
        problems.append(f"{where}: no static membership (KINFER_INSTANCE_ID from the pod name)")
    sc = spec.get("securityContext", {})
    uid = re.search(r"USER (\d+)", read(DOCKERFILE))
    if not sc.get("runAsNonRoot") or str(sc.get("runAsUser")) != (uid and uid.group(1)):
        problems.append(f"{where}: pod securityContext does not run as the image's user")
    for kind in ("PodDisruptionBudget", "Service"):
        objs = [d for d in docs if d["kind"] == kind]
        if not objs:
            problems.append(f"{where}: no {kind}")
        for o in objs:
            sel = o["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            if any(pod_labels.get(k) != v for k, v in sel.items()):
                problems.append(f"{where}: {kind} {o['metadata']['name']} selects {sel}, "
                                f"not the worker pods {pod_labels}")
    group = env.get("KINFER_GROUP", "kinfer-workers")
    topic = env.get("KINFER_TOPIC", "kinfer.jobs")
    metrics = worker_metrics()
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        if so["apiVersion"] != "keda.sh/v1alpha1":
            problems.append(f"{where}: ScaledObject apiVersion {so['apiVersion']}")
        unknown = set(so["spec"]) - KEDA_SPEC
        if unknown:
            problems.append(f"{where}: ScaledObject fields KEDA does not know: {unknown}")
        if so["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
            problems.append(f"{where}: ScaledObject scales something else")
        if so["spec"].get("maxReplicaCount", 100) > partitions:
            problems.append(f"{where}: maxReplicaCount {so['spec'].get('maxReplicaCount')} > "
                            f"{partitions} partitions: the extra workers would idle")
        for t in so["spec"]["triggers"]:
            if set(t) - KEDA_TRIGGER:
                problems.append(f"{where}: trigger fields KEDA does not know: "
                                f"{set(t) - KEDA_TRIGGER}")
            if t["type"] not in KEDA_META:
                problems.append(f"{where}: trigger type {t['type']}")
                continue
            need, known = KEDA_META[t["type"]]
            meta = t["metadata"]
            if need - set(meta) or set(meta) - known:
                problems.append(f"{where}: {t['type']} trigger: missing {need - set(meta)}, "
                                f"unknown {set(meta) - known} (KEDA docs)")
            if any(not isinstance(v, str) for v in meta.values()):
                problems.append(f"{where}: {t['type']} trigger: metadata values must be "
                                "strings")
            if t["type"] == "kafka" and (meta.get("consumerGroup") != group or
                                         meta.get("topic") != topic):
                problems.append(f"{where}: kafka trigger watches {meta.get('consumerGroup')}/"
                                f"{meta.get('topic')}, the workers are {group}/{topic}")
            if t["type"] == "kafka" and meta.get("offsetResetPolicy") != "earliest":
                problems.append(f"{where}: kafka trigger offsetResetPolicy must be earliest "
                                "(the worker's auto.offset.reset)")
            if t["type"] == "prometheus":
                used = set(re.findall(r"kinfer_[a-z_]+", meta.get("query", "")))
                if not used or used - metrics:
                    problems.append(f"{where}: prometheus query uses {used - metrics or used}, "
                                    "not metrics of worker/metrics.c")
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
            problems.append(f"{where}: HPA scales something else")
        if hpa["spec"]["maxReplicas"] > partitions:
            problems.append(f"{where}: HPA maxReplicas > {partitions} partitions")
    if "replicas" in dep["spec"] and any(d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
                                         for d in docs):
        problems.append(f"{where}: an autoscaler and a fixed replicas field fight")
    return problems


def compose_partitions(doc):
    m = re.search(r":-(\d+)", str(doc["services"]["kafka-init"]["environment"]
                                  ["TOPIC_PARTITIONS"]))
    return int(m.group(1))


def shell_scripts():
    out = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                head = f.readline()
            if re.match(rb"#!.*\b(ba)?sh\b", head):
                out.append(path)
    return out


def check_shellcheck(paths):
    p = subprocess.run(["shellcheck", "-S", "warning", "-f", "gcc"] + paths,
                       capture_output=True, text=True)
    return [line for line in p.stdout.splitlines() if line.strip()]


class AssetsTest(unittest.TestCase):
    def setUp(self):
        self.dockerfile = read(DOCKERFILE)
        self.compose = yaml.safe_load(read(COMPOSE))

    def test_yaml_parses(self):
        files = glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True)
        self.assertGreater(len(files), 10)
        for path in files:
            with self.subTest(path=os.path.relpath(path, REPO)):
                list(yaml.safe_load_all(read(path)))

    def test_dockerfile(self):
        self.assertEqual(check_dockerfile(self.dockerfile), [])
        self.assertEqual(check_runtime_libraries(self.dockerfile), [])

    def test_compose(self):
        self.assertEqual(check_compose(self.compose, self.dockerfile), [])

    def test_overlays(self):
        if not shutil.which("kubectl"):
            self.fail("no kubectl: make deps installs Debian's kubernetes-client")
        self.assertEqual(sorted(map(os.path.basename, OVERLAYS)),
                         ["fixed", "hpa", "keda-lag", "keda-work"])
        for o in OVERLAYS:
            with self.subTest(overlay=os.path.basename(o)):
                docs = render(o)
                self.assertIsInstance(docs, list, docs)
                self.assertEqual(check_k8s(os.path.basename(o), docs,
                                           compose_partitions(self.compose)), [])

    def test_shellcheck(self):
        scripts = shell_scripts()
        self.assertIn(os.path.join(DEPLOY, "docker", "demo.sh"), scripts)
        self.assertEqual(check_shellcheck(scripts), [])


class BrokenAssetsTest(unittest.TestCase):
    """Each check, fed a broken asset, names the problem."""

    def setUp(self):
        self.dockerfile = read(DOCKERFILE)
        self.compose = yaml.safe_load(read(COMPOSE))
        self.k8s = render(os.path.join(DEPLOY, "k8s", "overlays", "keda-work"))
        self.assertIsInstance(self.k8s, list, self.k8s)

    def assertFound(self, problems, needle):
        self.assertTrue(any(needle in p for p in problems),
                        f"no problem mentioning {needle!r} in {problems}")

    def test_dockerfile_broken(self):
        cases = [
            ("FROM debian:bookworm-slim AS build", "FROM debian AS build", "not a pinned"),
            ("FROM debian:bookworm-slim AS runtime", "FROM debian:latest AS runtime",
             "not a pinned"),
            ("USER 10001:10001", "USER root", "runs as root"),
            ("HEALTHCHECK --interval", "#HEALTHCHECK --interval", "no HEALTHCHECK"),
            ('"/healthz"', '"/health"', "HEALTHCHECK checks none"),
            ("/src/build/kinfer-worker /usr", "/src/build/kinfer-wrker /usr", "does not build"),
            ("COPY deploy/docker/demo.sh", "COPY deploy/docker/demo2.sh", "no such file"),
            ("--no-install-recommends \\\n      librdkafka1", "\\\n      librdkafka1",
             "without --no-install-recommends"),
        ]
        for old, new, needle in cases:
            with self.subTest(broken=new):
                self.assertIn(old, self.dockerfile)
                self.assertFound(check_dockerfile(self.dockerfile.replace(old, new, 1)), needle)
        self.assertFound(check_runtime_libraries(self.dockerfile.replace(" libjansson4", "")),
                         "libjansson4")

    def test_compose_broken(self):
        def broken(edit):
            doc = copy.deepcopy(self.compose)
            edit(doc["services"])
            return check_compose(doc, self.dockerfile)
        w = "worker"
        self.assertFound(broken(lambda s: s[w]["environment"].update(KINFER_GRACEMS="1")),
                         "KINFER_GRACEMS is not a variable")
        self.assertFound(broken(lambda s: s[w]["environment"].update(KINFER_GRACE_MS="-1")),
                         "refuses it")
        self.assertFound(broken(lambda s: s[w]["command"].extend(["--drain-ms", "5"])),
                         "--drain-ms is not a flag")
        self.assertFound(broken(lambda s: s[w]["command"].extend(["-X", "sesion.timeout.ms=1"])),
                         "librdkafka refuses")
        self.assertFound(broken(lambda s: s[w].update(expose=["9465"])), "listens on")
        self.assertFound(broken(lambda s: s[w].update(stop_grace_period="10s")),
                         "before SIGKILL")
        self.assertFound(broken(lambda s: s[w].update(ports=["9464:9464"])), "--scale")
        self.assertFound(broken(lambda s: s[w]["build"].update(target="wrkr")),
                         "not a stage")
        self.assertFound(broken(lambda s: s["redis"]["command"].__setitem__(
            s["redis"]["command"].index("noeviction"), "volatile-lru")), "charged twice")
        self.assertFound(broken(lambda s: s["kafka"].update(image="bitnami/kafka:4.1")),
                         "official")
        self.assertFound(broken(lambda s: s["demo"].update(entrypoint=["/usr/bin/kdemo"])),
                         "not in the cli image")

    def test_k8s_broken(self):
        def broken(edit):
            docs = copy.deepcopy(self.k8s)
            by = {d["kind"]: d for d in docs}
            edit(by, by["Deployment"]["spec"]["template"]["spec"]["containers"][0])
            return check_k8s("broken", docs, 12)
        self.assertFound(broken(lambda b, c: c["readinessProbe"]["httpGet"].update(
            path="/ready")), "not a route")
        self.assertFound(broken(lambda b, c: c["ports"][0].update(containerPort=8080)),
                         "listens on")
        self.assertFound(broken(lambda b, c: b["ConfigMap"]["data"].update(
            KINFER_COMPUTE_THREAD="2")), "not a variable")
        self.assertFound(broken(lambda b, c: c["args"].append("--grace")), "not a flag")
        self.assertFound(broken(lambda b, c: b["Deployment"]["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=10)), "before SIGKILL")
        self.assertFound(broken(lambda b, c: c.update(lifecycle={"preStop": {"exec": {
            "command": ["sh", "-c", "sleep 25"]}}})), "before SIGKILL")
        self.assertFound(broken(lambda b, c: b["PodDisruptionBudget"]["spec"]["selector"][
            "matchLabels"].update(app="kinfer")), "selects")
        self.assertFound(broken(lambda b, c: b["ScaledObject"]["spec"].update(
            maxReplicaCount=24)), "partitions")
        self.assertFound(broken(lambda b, c: b["ScaledObject"]["spec"]["triggers"][1][
            "metadata"].update(lagThreshhold="5")), "unknown {'lagThreshhold'}")
        self.assertFound(broken(lambda b, c: b["ScaledObject"]["spec"]["triggers"][1][
            "metadata"].update(consumerGroup="kinfer")), "the workers are")
        self.assertFound(broken(lambda b, c: b["ScaledObject"]["spec"]["triggers"][0][
            "metadata"].update(query="sum(kinfer_work_left)")), "not metrics")
        self.assertFound(broken(lambda b, c: b["ScaledObject"]["spec"]["triggers"][0][
            "metadata"].update(threshold=5)), "must be strings")
        self.assertFound(broken(lambda b, c: b["Deployment"]["spec"].update(replicas=2)),
                         "fight")

    def test_kustomize_broken(self):
        with tempfile.TemporaryDirectory() as d:
            shutil.copytree(os.path.join(DEPLOY, "k8s"), os.path.join(d, "k8s"))
            os.remove(os.path.join(d, "k8s", "base", "pdb.yaml"))
            self.assertIsInstance(render(os.path.join(d, "k8s", "overlays", "fixed")), str)

    def test_shellcheck_broken(self):
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
            f.write(read(os.path.join(DEPLOY, "docker", "demo.sh")).replace("ok=$(", "okk=$("))
            f.flush()
            self.assertFound(check_shellcheck([f.name]), "SC2154")


if __name__ == "__main__":
    unittest.main(verbosity=2)
