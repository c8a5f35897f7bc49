#!/usr/bin/env python3
"""The API contract run: schemathesis against a live `tessera serve`.

Starts a worker on a throwaway SQLite data directory (ephemeral ports), makes
a tenant with the admin key, then runs `st run` on the worker's own
`/openapi.json` with every phase (examples, coverage, fuzzing, stateful) and
every check. The worker renders at most one job at a time so the API stays
responsive while fuzzed jobs queue. Exits with schemathesis' status; its
summary (phases, test-case counts) is printed as is, for the CI log.

Usage: scripts/api-contract.py [TESSERA_BINARY] [--max-examples N]
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    args = sys.argv[1:]
    examples = "50"
    if "--max-examples" in args:
        i = args.index("--max-examples")
        examples = args[i + 1]
        del args[i : i + 2]
    binary = args[0] if args else os.path.join(ROOT, "target", "debug", "tessera")
    admin = "contract-admin-" + os.urandom(8).hex()
    with tempfile.TemporaryDirectory(prefix="tessera-contract-") as data:
        log_path = os.path.join(data, "worker.log")
        env = dict(os.environ, TESSERA_ADMIN_KEY=admin, TESSERA_LOG="warn,access=info")
        env.setdefault("XDG_RUNTIME_DIR", "/tmp")
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                [binary, "serve", "--data", data, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--concurrency", "1", "--max-concurrency", "1", "--log-format", "json"],
                stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        try:
            line = worker.stdout.readline()
            if "http://" not in line:
                sys.exit(f"the worker did not start: {line!r}\n{open(log_path).read()}")
            base = "http://" + line.split("http://")[1].split(" ")[0]
            tenant = post(base + "/v1/tenants", {"name": "contract", "tier": "enterprise"}, admin)
            st_env = dict(os.environ, TESSERA_ST_TENANT_KEY=tenant["api_key"], TESSERA_ST_ADMIN_KEY=admin,
                          SCHEMATHESIS_HOOKS="hooks", PYTHONPATH=os.path.join(HERE, "schemathesis"))
            cmd = ["st", "--config-file", os.path.join(HERE, "schemathesis", "schemathesis.toml"), "--no-color",
                   "run", base + "/openapi.json", "--checks", "all",
                   "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", examples, "--workers", "1"]
            print("+ " + " ".join(cmd), flush=True)
            # In the scratch directory: schemathesis keeps a cache where it runs.
            code = subprocess.call(cmd, env=st_env, cwd=data)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
        requests, server_errors, leaked = access_summary(log_path, [admin, tenant["api_key"]])
        print(f"api contract: {requests} requests in the worker's access log, {server_errors} with a 5xx; "
              f"keys in the log: {leaked}")
        if server_errors or leaked or requests == 0:
            print(open(log_path).read()[-4000:])
            code = code or 1
    sys.exit(code)


def post(url, body, key):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def access_summary(path, secrets):
    """Requests and 5xx answers in the JSON access log; whether a key leaked into it."""
    text = open(path).read()
    requests = errors = 0
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("target") == "access":
            requests += 1
            errors += int(event.get("status", 0)) >= 500
    return requests, errors, any(s in text for s in secrets)


if __name__ == "__main__":
    main()
