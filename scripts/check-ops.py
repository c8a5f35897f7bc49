#!/usr/bin/env python3
"""Checks the operations files: Prometheus rules, their unit tests, the example
Prometheus configuration and the Grafana dashboards.

- promtool check rules on deploy/prometheus/{recording,alerts}.rules.yml;
- promtool test rules on deploy/prometheus/tests/*.yml, and every alert has a
  test case where it fires and one where it does not;
- every alert has a `severity` label and `summary`, `description` and
  one-line `runbook` annotations;
- promtool check config on deploy/prometheus/prometheus.yml (and on
  prometheus-kubernetes.yml where this promtool has Kubernetes discovery);
- every dashboard has a unique uid, every panel at least one query; every
  query (panel targets and template-variable queries, Grafana variables
  substituted) parses as PromQL (promtool check rules on a temporary file)
  and names only known metrics: the `pub const ... = "tessera_..."` names of
  metering/src/prom.rs (with _bucket/_sum/_count for the histograms), the
  recording rules, and `up`. Rule expressions must name only known metrics too.

Python 3 standard library only. `--self-test` proves that the dashboard check
fails on an expression that does not parse and on an unknown metric.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROM_DIR = os.path.join(ROOT, "deploy", "prometheus")
RULE_FILES = [os.path.join(PROM_DIR, "recording.rules.yml"), os.path.join(PROM_DIR, "alerts.rules.yml")]
TESTS_GLOB = os.path.join(PROM_DIR, "tests", "*.yml")
CONFIGS = [os.path.join(PROM_DIR, "prometheus.yml")]
# Checked when this promtool knows kubernetes_sd_configs (Debian's does not).
OPTIONAL_CONFIGS = [os.path.join(PROM_DIR, "prometheus-kubernetes.yml")]
DASHBOARDS_GLOB = os.path.join(ROOT, "deploy", "grafana", "dashboards", "*.json")
PROM_RS = os.path.join(ROOT, "metering", "src", "prom.rs")
HISTOGRAMS = ("tessera_queue_wait_seconds", "tessera_run_seconds", "tessera_submission_jobs")


class CheckError(Exception):
    pass


def rel(path):
    return os.path.relpath(path, ROOT)


# --- a small YAML reader for the subset our rule and test files use ---------
# Block mappings and sequences, plain and quoted scalars, block scalars (| and
# >, with an indentation indicator), comments, and flow values kept as text
# ([] and {} become empty lists and maps). Enough to read names, labels,
# annotations and expressions; promtool itself validates the files.


def _strip_comment(line):
    out, quote = [], None
    for i, c in enumerate(line):
        if quote:
            if c == "\\" and quote == '"':
                out.append(c)
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(c)
    return "".join(out).rstrip()


def _scalar(text):
    t = text.strip()
    if t == "[]":
        return []
    if t == "{}":
        return {}
    if len(t) >= 2 and t[0] == t[-1] == '"':
        return json.loads(t)
    if len(t) >= 2 and t[0] == t[-1] == "'":
        return t[1:-1].replace("''", "'")
    return t


def parse_yaml(text):
    lines = text.split("\n")
    pos = [0]

    def indent(line):
        return len(line) - len(line.lstrip(" "))

    def next_content():
        while pos[0] < len(lines):
            stripped = _strip_comment(lines[pos[0]])
            if stripped.strip():
                return pos[0], stripped
            pos[0] += 1
        return None, None

    def block_scalar(header, parent_indent):
        m = re.match(r"^([|>])([+-]?)(\d*)([+-]?)$", header)
        style, explicit = m.group(1), m.group(3)
        body = []
        block_indent = parent_indent + int(explicit) if explicit else None
        while pos[0] < len(lines):
            line = lines[pos[0]]
            if line.strip() == "":
                body.append("")
                pos[0] += 1
                continue
            if block_indent is None:
                block_indent = indent(line)
                if block_indent <= parent_indent:
                    break
            if indent(line) < block_indent:
                break
            body.append(line[block_indent:])
            pos[0] += 1
        while body and body[-1] == "":
            body.pop()
        if style == ">":
            return " ".join(b.strip() for b in body) + "\n"
        return "\n".join(body) + "\n"

    def value_after_key(rest, key_indent):
        rest = rest.strip()
        if rest.startswith("|") or rest.startswith(">"):
            return block_scalar(rest, key_indent)
        if rest == "":
            i, line = next_content()
            if i is None or indent(line) < key_indent or (indent(line) == key_indent and not line.lstrip().startswith("- ")):
                return None
            return node(indent(line))
        return _scalar(rest)

    def node(ind):
        i, line = next_content()
        if line.lstrip().startswith("- ") or line.strip() == "-":
            return seq(ind)
        return mapping(ind)

    def mapping(ind, first=None):
        result = {}
        if first is not None:
            k, rest = first
            result[k] = value_after_key(rest, ind)
        while True:
            i, line = next_content()
            if i is None or indent(line) != ind or line.lstrip().startswith("- "):
                return result
            m = re.match(r"^\s*([^:]+?|\"[^\"]*\"|'[^']*'):(\s.*|)$", line)
            if not m:
                raise CheckError(f"YAML: cannot read line {i + 1}: {line.strip()}")
            pos[0] += 1
            result[_scalar(m.group(1))] = value_after_key(m.group(2), ind)

    def seq(ind):
        result = []
        while True:
            i, line = next_content()
            if i is None or indent(line) != ind or not (line.lstrip().startswith("- ") or line.strip() == "-"):
                return result
            item = line.lstrip()[2:] if line.strip() != "-" else ""
            item_indent = ind + 2
            pos[0] += 1
            m = re.match(r"^([^:\s][^:]*?|\"[^\"]*\"|'[^']*'):(\s.*|)$", item)
            if item.strip() == "":
                result.append(node(indent(next_content()[1])))
            elif m and not item.lstrip().startswith(("{", "[", '"', "'")) or (m and item.startswith(('"', "'"))):
                result.append(mapping(item_indent, (_scalar(m.group(1)), m.group(2))))
            else:
                result.append(_scalar(item))

    i, line = next_content()
    if i is None:
        return None
    return node(indent(line))


# --- PromQL metric names -----------------------------------------------------

KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "inf", "nan", "atan2",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"(0x[0-9a-fA-F]+|[0-9][0-9a-zA-Z_.]*([eE][+-]?[0-9]+)?)")


def _skip_string(s, i):
    q = s[i]
    i += 1
    while i < len(s):
        if s[i] == "\\" and q != "`":
            i += 2
            continue
        if s[i] == q:
            return i + 1
        i += 1
    return i


def _skip_balanced(s, i, open_c, close_c):
    """From s[i] == open_c to just past its matching close_c; returns (end, inner text)."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c in "\"'`":
            j = _skip_string(s, j)
            continue
        if c == open_c:
            depth += 1
        elif c == close_c:
            depth -= 1
            if depth == 0:
                return j + 1, s[i + 1 : j]
        j += 1
    return j, s[i + 1 :]


def metric_names(expr):
    """Metric names an expression selects: identifiers that are not functions,
    keywords, label lists, matchers, ranges, strings, numbers or durations."""
    names = set()
    s = re.sub(r"#[^\n]*", "", expr)
    i = 0
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
        elif c == "{":
            i, inner = _skip_balanced(s, i, "{", "}")
            for m in re.finditer(r"__name__\s*=\s*\"([^\"]+)\"", inner):
                names.add(m.group(1))
        elif c == "[":
            i, _ = _skip_balanced(s, i, "[", "]")
        elif c.isdigit() or (c == "." and i + 1 < len(s) and s[i + 1].isdigit()):
            m = NUMBER.match(s, i)
            i = m.end() if m else i + 1
        elif IDENT.match(s, i):
            m = IDENT.match(s, i)
            word, i = m.group(0), m.end()
            j = i
            while j < len(s) and s[j].isspace():
                j += 1
            followed_by_paren = j < len(s) and s[j] == "("
            if word.lower() in GROUPING:
                if followed_by_paren:
                    i, _ = _skip_balanced(s, j, "(", ")")
            elif word.lower() in KEYWORDS or followed_by_paren:
                pass  # keyword, aggregation or function name
            else:
                names.add(word)
        else:
            i += 1
    return names


def known_metrics(recording_names):
    src = open(PROM_RS, encoding="utf-8").read()
    consts = set(re.findall(r'pub const [A-Z0-9_]+: &str = "(tessera_[a-z0-9_]+)";', src))
    if not consts:
        raise CheckError(f"no metric names found in {rel(PROM_RS)}")
    known = set(consts)
    for h in HISTOGRAMS:
        if h in consts:
            known |= {h + "_bucket", h + "_sum", h + "_count"}
    known |= set(recording_names)
    known.add("up")
    return known


# --- Grafana -----------------------------------------------------------------

INTERVAL_VARS = {"__rate_interval", "__interval", "__range", "__auto_interval"}
NUMBER_VARS = {"__range_s", "__range_ms", "__interval_ms"}


def substitute_grafana(expr):
    """Grafana variables to values PromQL accepts: durations for the interval
    variables, numbers for their _s/_ms forms, a placeholder in strings (regex
    matchers) and 1 elsewhere for template variables."""

    out, i, quote = [], 0, None
    var = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
    while i < len(expr):
        c = expr[i]
        if quote is None and c in "\"'`":
            quote = c
        elif quote is not None and c == "\\" and quote != "`":
            out.append(expr[i : i + 2])
            i += 2
            continue
        elif quote is not None and c == quote:
            quote = None
        m = var.match(expr, i)
        if m:
            name = m.group(1) or m.group(2) or m.group(3)
            if name in INTERVAL_VARS:
                rep = "5m"
            elif name in NUMBER_VARS or name.startswith("__"):
                rep = "300"
            elif quote is not None:
                rep = "grafana_var"
            else:
                rep = "1"
            out.append(rep)
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def variable_query(v):
    """The PromQL a template variable runs, if any: label_values(metric, label)
    checks just its metric; query_result(expr) its expression."""
    q = v.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    if not isinstance(q, str) or v.get("type") != "query":
        return None
    q = q.strip()
    m = re.match(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$", q, re.S)
    if m:
        return m.group(1).strip()
    if re.match(r"^label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$", q) or re.match(r"^(label_names|metrics)\(", q):
        return None
    m = re.match(r"^query_result\((.*)\)$", q, re.S)
    if m:
        return m.group(1)
    return q


def all_panels(panels):
    for p in panels or []:
        yield p
        yield from all_panels(p.get("panels"))


def dashboard_queries(name, dash, problems):
    """(where, expr) for every query of a dashboard; problems for panels without one."""
    queries = []
    for v in (dash.get("templating") or {}).get("list", []):
        q = variable_query(v)
        if q:
            queries.append((f"{name}: variable ${v.get('name')}", q))
    panels = 0
    for p in all_panels(dash.get("panels")):
        if p.get("type") == "row":
            continue
        panels += 1
        where = f"{name}: panel {p.get('id')} \"{p.get('title', '')}\""
        targets = [t for t in p.get("targets") or [] if isinstance(t.get("expr"), str) and t["expr"].strip()]
        if not targets:
            problems.append(f"{where}: no query")
        for t in targets:
            queries.append((f"{where} target {t.get('refId', '?')}", t["expr"]))
    return queries, panels


def promtool(*args, cwd=ROOT):
    try:
        return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise CheckError("promtool not found (Debian: apt-get install prometheus; or bash scripts/setup.sh)")


def check_parse(queries, problems):
    """Parses every (where, expr) with promtool: one recording rule each in a
    temporary rules file; failures are mapped back to their query by line."""
    if not queries:
        return
    lines, line_of = ["groups:", "  - name: dashboard-queries", "    rules:"], {}
    for n, (where, expr) in enumerate(queries):
        lines.append(f"      - record: check_ops:query_{n}")
        line_of[len(lines) + 1] = n
        lines.append("        expr: " + json.dumps(expr))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="check-ops-", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        r = promtool("check", "rules", path)
    finally:
        os.unlink(path)
    if r.returncode == 0:
        return
    out = r.stdout + r.stderr
    matched = False
    for m in re.finditer(r"^.*?:\s*(\d+):\d+:.*?could not parse expression: (.*)$", out, re.M):
        n = line_of.get(int(m.group(1)))
        if n is not None:
            matched = True
            where, expr = queries[n]
            problems.append(f"{where}: does not parse: {m.group(2)}\n      {expr}")
    if not matched:
        problems.append("promtool check rules on the dashboard queries failed:\n" + out.strip())


def check_names(queries, known, problems):
    for where, expr in queries:
        unknown = sorted(metric_names(expr) - known)
        if unknown:
            problems.append(f"{where}: unknown metric {', '.join(unknown)}\n      {expr}")


def check_dashboards(dashboards, known, problems):
    """dashboards: [(name, parsed JSON)]. Returns (panels, queries) counted."""
    uids, panels, queries = {}, 0, []
    for name, dash in dashboards:
        uid = dash.get("uid")
        if not uid:
            problems.append(f"{name}: no uid")
        elif uid in uids:
            problems.append(f"{name}: uid {uid!r} also used by {uids[uid]}")
        else:
            uids[uid] = name
        q, n = dashboard_queries(name, dash, problems)
        panels += n
        queries += [(w, substitute_grafana(e)) for w, e in q]
    check_parse(queries, problems)
    check_names(queries, known, problems)
    return panels, len(queries)


# --- rules ---------------------------------------------------------------------


def load_rules(path):
    doc = parse_yaml(open(path, encoding="utf-8").read()) or {}
    rules = []
    for g in doc.get("groups") or []:
        for r in g.get("rules") or []:
            rules.append(r)
    return rules


def check_rule_files(problems):
    r = promtool("check", "rules", *[rel(p) for p in RULE_FILES])
    if r.returncode != 0:
        raise CheckError("promtool check rules failed:\n" + (r.stdout + r.stderr).strip())
    promtool_count = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", r.stdout))
    recording, alerts = [], []
    for path in RULE_FILES:
        for rule in load_rules(path):
            if "record" in rule:
                recording.append((path, rule))
            elif "alert" in rule:
                alerts.append((path, rule))
    if len(recording) + len(alerts) != promtool_count:
        raise CheckError(
            f"read {len(recording) + len(alerts)} rules but promtool found {promtool_count}: the YAML reader missed some"
        )
    names = {rule["record"] for _, rule in recording}
    known = known_metrics(names)
    for path, rule in recording + alerts:
        what = f"{rel(path)}: {rule.get('record') or rule.get('alert')}"
        unknown = sorted(metric_names(str(rule.get("expr", ""))) - known)
        if unknown:
            problems.append(f"{what}: unknown metric {', '.join(unknown)}")
    for path, rule in alerts:
        what = f"{rel(path)}: alert {rule['alert']}"
        if not (rule.get("labels") or {}).get("severity"):
            problems.append(f"{what}: no severity label")
        ann = rule.get("annotations") or {}
        for a in ("summary", "description", "runbook"):
            if not str(ann.get(a) or "").strip():
                problems.append(f"{what}: no {a} annotation")
        if "\n" in str(ann.get("runbook") or "").strip():
            problems.append(f"{what}: the runbook annotation must be one line")
    return known, [rule["alert"] for _, rule in alerts], len(recording)


def check_rule_tests(alert_names, problems):
    tests = sorted(glob.glob(TESTS_GLOB))
    if not tests:
        raise CheckError(f"no rule tests in {rel(os.path.dirname(TESTS_GLOB))}")
    r = promtool("test", "rules", *[rel(t) for t in tests])
    if r.returncode != 0:
        raise CheckError("promtool test rules failed:\n" + (r.stdout + r.stderr).strip())
    fires, quiet, cases, exprs = set(), set(), 0, 0
    for t in tests:
        doc = parse_yaml(open(t, encoding="utf-8").read()) or {}
        for group in doc.get("tests") or []:
            for case in group.get("alert_rule_test") or []:
                cases += 1
                (fires if case.get("exp_alerts") else quiet).add(case.get("alertname"))
            exprs += len(group.get("promql_expr_test") or [])
    for a in alert_names:
        if a not in fires:
            problems.append(f"alert {a}: no test case where it fires")
        if a not in quiet:
            problems.append(f"alert {a}: no test case where it does not fire")
    if exprs == 0:
        problems.append("no promql_expr_test for the recording rules")
    return cases, exprs


def check_configs(problems, notes):
    for cfg in CONFIGS + OPTIONAL_CONFIGS:
        if not os.path.exists(cfg):
            if cfg in CONFIGS:
                problems.append(f"{rel(cfg)}: missing")
            continue
        # promtool resolves rule_files relative to the configuration file.
        r = promtool("check", "config", rel(cfg))
        out = (r.stdout + r.stderr).strip()
        if r.returncode == 0:
            continue
        if cfg in OPTIONAL_CONFIGS and "field kubernetes_sd_configs not found" in out:
            notes.append(f"{rel(cfg)}: not checked: this promtool has no Kubernetes discovery (Debian build)")
            continue
        problems.append(f"promtool check config {rel(cfg)} failed:\n{out}")


def load_dashboards():
    dashboards = []
    for path in sorted(glob.glob(DASHBOARDS_GLOB)):
        try:
            dashboards.append((rel(path), json.load(open(path, encoding="utf-8"))))
        except ValueError as e:
            raise CheckError(f"{rel(path)}: not JSON: {e}")
    if not dashboards:
        raise CheckError(f"no dashboards in {rel(os.path.dirname(DASHBOARDS_GLOB))}")
    return dashboards


# --- self-test -------------------------------------------------------------------


def self_test():
    """The dashboard check must fail on a query that does not parse and on an
    unknown metric, and pass a good dashboard; the tokenizer must find the
    metrics of a few tricky expressions and nothing else."""
    known = known_metrics(["lane:tessera_queue_depth:max"])

    def dash(uid, *exprs):
        return {"uid": uid, "panels": [{"id": i + 1, "type": "timeseries", "title": f"p{i + 1}",
                                        "targets": [{"refId": "A", "expr": e}]} for i, e in enumerate(exprs)]}

    cases = [
        ("good", [dash("a", 'sum by (lane) (rate(tessera_jobs_total{lane=~"${lane:regex}"}[$__rate_interval]))',
                       "lane:tessera_queue_depth:max", 'histogram_quantile(0.95, sum by (le) (rate(tessera_run_seconds_bucket[$__interval])))')], None),
        ("unknown metric", [dash("b", "rate(tessera_nonexistent_total[5m])")], "unknown metric tessera_nonexistent_total"),
        ("does not parse", [dash("c", "sum(")], "does not parse"),
        ("no query", [{"uid": "d", "panels": [{"id": 1, "type": "stat", "title": "empty", "targets": []}]}], "no query"),
        ("duplicate uid", [dash("e", "up"), dash("e", "up")], "also used by"),
        ("unknown metric in a variable", [{"uid": "f", "panels": [], "templating": {"list": [
            {"name": "tenant", "type": "query", "query": {"query": "label_values(tessera_nope_total, tenant)"}}]}}], "unknown metric tessera_nope_total"),
    ]
    failures = []
    for label, dashboards, expect in cases:
        problems = []
        check_dashboards([(f"self-test/{label}/{i}.json", d) for i, d in enumerate(dashboards)], known, problems)
        if expect is None and problems:
            failures.append(f"{label}: expected to pass, got: {problems}")
        elif expect is not None and not any(expect in p for p in problems):
            failures.append(f"{label}: expected a problem containing {expect!r}, got: {problems or 'none'}")
        else:
            print(f"self-test: {label}: {'passes' if expect is None else 'fails as it should'}")
    tokenizer = [
        ('sum by (tenant, tier) ((a_total unless a_total offset 1h) or increase(b_total{x="y{z}"}[1h]))', {"a_total", "b_total"}),
        ('max by (lane) (x) > on (lane) group_left (foo) max by (lane) (y) and bool z', {"x", "y", "z"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)") * on() group_left vector(1) - 1e3 + 0x1f + 1h', {"up"}),
        ('{__name__="hidden_metric", job="a"} / ignoring(le) rate(c[5m:1m] @ 100)', {"hidden_metric", "c"}),
        ("topk(3, sum without (instance) (rate(foo:bar:rate5m[5m]))) # a comment mentioning nope", {"foo:bar:rate5m"}),
    ]
    for expr, want in tokenizer:
        got = metric_names(expr)
        if got != want:
            failures.append(f"tokenizer: {expr!r}: got {sorted(got)}, want {sorted(want)}")
    if substitute_grafana('rate(x{a=~"${tenant:regex}",b="$tier"}[$__rate_interval]) * $factor') != 'rate(x{a=~"grafana_var",b="grafana_var"}[5m]) * 1':
        failures.append("substitute_grafana: unexpected result")
    print(f"self-test: tokenizer: {len(tokenizer)} expressions, variable substitution")
    if failures:
        raise CheckError("self-test failed:\n  " + "\n  ".join(failures))
    print("check-ops self-test: OK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-test", action="store_true", help="prove that the checks catch bad dashboards, then exit")
    args = ap.parse_args()
    try:
        if args.self_test:
            self_test()
            return 0
        problems, notes = [], []
        known, alerts, recording = check_rule_files(problems)
        cases, exprs = check_rule_tests(alerts, problems)
        check_configs(problems, notes)
        dashboards = load_dashboards()
        panels, queries = check_dashboards(dashboards, known, problems)
    except CheckError as e:
        print(f"check-ops: FAILED: {e}", file=sys.stderr)
        return 1
    for n in notes:
        print(f"check-ops: note: {n}")
    if problems:
        print("check-ops: FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"check-ops: OK: {recording + len(alerts)} rules ({recording} recording, {len(alerts)} alerts), "
        f"{cases} alert tests, {exprs} expression tests, {len(dashboards)} dashboards, "
        f"{panels} panels, {queries} queries checked"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
