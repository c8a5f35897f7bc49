#!/usr/bin/env python3
"""Validates the Kubernetes manifests under deploy/kubernetes, offline.

Run with the Python of target/st-venv (scripts/setup.sh installs
kubernetes-validate there; it ships the Kubernetes OpenAPI schemas of every
release it supports, so nothing is fetched). What it checks, each a failure:

- every resource against the Kubernetes schema of KUBERNETES_VERSION in
  strict mode (an unknown or misspelled field, a wrong type). kubernetes-validate
  itself only warns about a kind it has no schema for and exits 0, which would
  let a misspelled `kind` or `apiVersion` through: here that is an error,
  except for the custom resources listed in CRD_SCHEMAS;
- a ServiceMonitor against CRD_SCHEMAS: the fields of the Prometheus
  Operator's monitoring.coreos.com/v1 CRD that a scrape of this Service would
  use, with their types and patterns as the CRD states them, and nothing
  else (a field the CRD has but this subset lacks is refused: add it here);
- every kustomization.yaml: its own fields, every file it lists exists, every
  YAML file of its directory is listed (a manifest nobody applies is a
  mistake too), generator inputs exist (or, for a file the operator fills in
  and git ignores, its `.example`, which is then read instead), every image
  it renames is used;
- references within the fleet: each secretKeyRef names a Secret and key that
  a kustomization generates, each Service, PodDisruptionBudget and
  ServiceMonitor selector matches something, and each named port (probes,
  Service targetPort, ServiceMonitor endpoint) exists;
- where kubectl is installed (it is not required), the output of
  `kubectl kustomize` of each kustomization, validated again.

Prints one line per problem and a one-line summary; exits 1 on any problem.
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

KUBERNETES_VERSION = "1.30.0"
ROOT = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_STRINGS = {"type": "array", "items": {"type": "string"}}
_RELABEL = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "action": {"type": "string"},
            "modulus": {"type": "integer"},
            "regex": {"type": "string"},
            "replacement": {"type": "string"},
            "separator": {"type": "string"},
            "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
            "targetLabel": {"type": "string"},
        },
    },
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": _STRINGS,
                },
            },
        },
    },
}
_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

# Custom resources, by (apiVersion, kind): the subset of their CRD's
# openAPIV3Schema described in the docstring.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["endpoints", "selector"],
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"}, "matchNames": _STRINGS},
                    },
                    "jobLabel": {"type": "string"},
                    "targetLabels": _STRINGS,
                    "podTargetLabels": _STRINGS,
                    "sampleLimit": {"type": "integer"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "targetPort": {"type": ["integer", "string"]},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                                "honorLabels": {"type": "boolean"},
                                "honorTimestamps": {"type": "boolean"},
                                "relabelings": _RELABEL,
                                "metricRelabelings": _RELABEL,
                            },
                        },
                    },
                },
            },
        },
    },
}

KUSTOMIZATION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "resources"],
    "properties": {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": {"type": "string"},
        "resources": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "secretGenerator": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "envs": _STRINGS,
                    "files": _STRINGS,
                    "literals": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+=.*$"}},
                },
            },
        },
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "newName": {"type": "string"},
                    "newTag": {"type": "string"},
                    "digest": {"type": "string"},
                },
            },
        },
    },
}

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


class Problems:
    def __init__(self):
        self.lines = []

    def add(self, where, message):
        self.lines.append(f"{where}: {message}")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def validate_resource(doc, where, problems):
    """Schema validation of one resource; returns how it was validated."""
    if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
        problems.add(where, "not a Kubernetes resource (no kind or apiVersion)")
        return None
    key = (doc["apiVersion"], doc["kind"])
    name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
    if key in CRD_SCHEMAS:
        errors = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            problems.add(where, f"{name}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        return "crd"
    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as e:
        problems.add(where, f"{name}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
    except kv.SchemaNotFoundError as e:
        problems.add(where, f"{name}: {e.message} (a misspelled kind or apiVersion, or a CRD with no schema here)")
    return "kubernetes"


def read_env_file(path, where, problems):
    keys = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            problems.add(f"{where}:{n}", "not KEY=VALUE")
            continue
        keys.add(m.group(1))
    return keys


def check_kustomization(directory, problems):
    """Checks one kustomization; returns (resources with their file, generated secrets)."""
    where = directory / "kustomization.yaml"
    rel = where.relative_to(ROOT.parent.parent)
    (k,) = load(where) or [None]
    for e in jsonschema.Draft202012Validator(KUSTOMIZATION_SCHEMA).iter_errors(k):
        problems.add(rel, f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
    if not isinstance(k, dict):
        return [], {}
    listed = set()
    docs = []
    for entry in k.get("resources") or []:
        target = directory / entry
        if target.is_dir():
            if not (target / "kustomization.yaml").is_file():
                problems.add(rel, f"resource {entry} is a directory without kustomization.yaml")
        elif not target.is_file():
            problems.add(rel, f"resource {entry} does not exist")
        else:
            listed.add(target.resolve())
            docs += [(target, d) for d in load(target)]
    for f in sorted(directory.iterdir()):
        if f.suffix in (".yaml", ".yml") and f.name != "kustomization.yaml" and f.resolve() not in listed:
            problems.add(rel, f"{f.name} is in the directory but not in resources")
    secrets = {}
    for gen in k.get("secretGenerator") or []:
        keys = set()
        for lit in gen.get("literals") or []:
            keys.add(lit.split("=", 1)[0])
        for env in gen.get("envs") or []:
            path = directory / env
            example = path.with_name(path.name + ".example")
            if path.is_file():
                keys |= read_env_file(path, path.relative_to(ROOT.parent.parent), problems)
            elif example.is_file():
                keys |= read_env_file(example, example.relative_to(ROOT.parent.parent), problems)
                if not git_ignores(path):
                    problems.add(rel, f"{env} is filled in by the operator but git does not ignore it")
            else:
                problems.add(rel, f"secretGenerator {gen.get('name')}: neither {env} nor {env}.example exists")
        for file in gen.get("files") or []:
            path = directory / file.split("=", 1)[-1]
            if not path.is_file():
                problems.add(rel, f"secretGenerator {gen.get('name')}: {file} does not exist")
            keys.add(file.split("=", 1)[0] if "=" in file else Path(file).name)
        secrets[gen.get("name")] = keys
    images = {c.get("image") for _, d in docs for c in containers(d)}
    for img in k.get("images") or []:
        if img.get("name") not in images:
            problems.add(rel, f"images: no container uses image `{img.get('name')}`")
    return docs, secrets


def git_ignores(path):
    """False only when git says it would track the file (outside a work tree,
    e.g. an exported source tree, there is nothing to leak)."""
    try:
        r = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, capture_output=True)
    except FileNotFoundError:
        return True
    return r.returncode != 1


def pod_spec(doc):
    if isinstance(doc, dict) and doc.get("kind") in WORKLOADS:
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {}


def pod_labels(doc):
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def containers(doc):
    spec = pod_spec(doc)
    return (spec.get("containers") or []) + (spec.get("initContainers") or [])


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(docs, secrets, problems):
    """Cross-references between the resources of all kustomizations."""
    workloads = [(f, d) for f, d in docs if d.get("kind") in WORKLOADS]
    services = [(f, d) for f, d in docs if d.get("kind") == "Service"]
    for f, d in workloads:
        where = f.relative_to(ROOT.parent.parent)
        for c in containers(d):
            ports = {p.get("name") for p in c.get("ports") or []}
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    if ref.get("name") not in secrets:
                        problems.add(where, f"{env['name']}: no kustomization generates Secret `{ref.get('name')}`")
                    elif ref.get("key") not in secrets[ref["name"]]:
                        problems.add(where, f"{env['name']}: Secret `{ref['name']}` has no key `{ref.get('key')}`")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.add(where, f"{c.get('name')}: {probe} uses port `{port}`, which the container does not name")
    for f, d in docs:
        where = f.relative_to(ROOT.parent.parent)
        kind, spec = d.get("kind"), d.get("spec") or {}
        if kind == "Service":
            targets = [w for _, w in workloads if matches(spec.get("selector"), pod_labels(w))]
            if not targets:
                problems.add(where, f"Service {d['metadata']['name']}: its selector matches no workload's pods")
            named = {p.get("name") for w in targets for c in containers(w) for p in c.get("ports") or []}
            for p in spec.get("ports") or []:
                if isinstance(p.get("targetPort"), str) and targets and p["targetPort"] not in named:
                    problems.add(where, f"Service {d['metadata']['name']}: targetPort `{p['targetPort']}` is no container port name")
        if kind == "PodDisruptionBudget":
            sel = (spec.get("selector") or {}).get("matchLabels")
            if not any(matches(sel, pod_labels(w)) for _, w in workloads):
                problems.add(where, f"PodDisruptionBudget {d['metadata']['name']}: its selector matches no workload's pods")
        if kind == "ServiceMonitor":
            sel = (spec.get("selector") or {}).get("matchLabels")
            svcs = [s for _, s in services if matches(sel, s["metadata"].get("labels") or {})]
            if not svcs:
                problems.add(where, f"ServiceMonitor {d['metadata']['name']}: its selector matches no Service")
            names = {p.get("name") for s in svcs for p in (s.get("spec") or {}).get("ports") or []}
            for ep in spec.get("endpoints") or []:
                if svcs and ep.get("port") not in names:
                    problems.add(where, f"ServiceMonitor {d['metadata']['name']}: port `{ep.get('port')}` is no Service port name")


def render_with_kubectl(directories, problems):
    """`kubectl kustomize` of each kustomization (on a copy whose operator
    files are their examples), each rendered resource validated again."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "kubernetes"
        shutil.copytree(ROOT, copy)
        for example in copy.rglob("*.example"):
            real = example.with_suffix("")
            if not real.exists():
                shutil.copy(example, real)
        for directory in directories:
            target = copy / directory.relative_to(ROOT)
            r = subprocess.run([kubectl, "kustomize", str(target)], capture_output=True, text=True)
            where = f"kubectl kustomize {directory.relative_to(ROOT.parent.parent)}"
            if r.returncode != 0:
                problems.add(where, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed")
                continue
            for doc in yaml.safe_load_all(r.stdout):
                if doc:
                    validate_resource(doc, where, problems)
                    count += 1
    return count


def main():
    problems = Problems()
    yaml_files = sorted(p for p in ROOT.rglob("*") if p.suffix in (".yaml", ".yml"))
    directories = sorted({p.parent for p in yaml_files})
    all_docs, secrets, kustomizations = [], {}, []
    for directory in directories:
        if not (directory / "kustomization.yaml").is_file():
            problems.add(directory.relative_to(ROOT.parent.parent), "YAML files but no kustomization.yaml listing them")
            continue
        kustomizations.append(directory)
        docs, generated = check_kustomization(directory, problems)
        all_docs += docs
        secrets.update(generated)
    counts = {"kubernetes": 0, "crd": 0}
    for f, doc in all_docs:
        how = validate_resource(doc, f.relative_to(ROOT.parent.parent), problems)
        if how:
            counts[how] += 1
    check_references(all_docs, secrets, problems)
    rendered = render_with_kubectl(kustomizations, problems)
    for line in problems.lines:
        print(f"ERROR {line}")
    rendered_note = f", {rendered} rendered by kubectl kustomize and validated" if rendered is not None else ", kubectl absent: rendering not checked"
    verdict = f"{len(problems.lines)} problem(s)" if problems.lines else "ok"
    print(
        f"manifests: {verdict}: {counts['kubernetes']} resources against Kubernetes {KUBERNETES_VERSION} (strict), "
        f"{counts['crd']} custom resource(s) against their CRD subset, {len(kustomizations)} kustomizations checked"
        f"{rendered_note}"
    )
    return 1 if problems.lines else 0


if __name__ == "__main__":
    sys.exit(main())
