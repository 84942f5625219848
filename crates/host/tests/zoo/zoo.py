#!/usr/bin/env python3
"""A zoo of test extensions for Ferry's host, one behaviour per mode (argv[1]); stdlib only.

`good` is a well-behaved backup extension: it creates one job per resource in scope, in
pages, keeping its cursor in Ferry's key-value store. Every other mode misbehaves in one way
(crash, hang, flood, garbage, rule breaking) so the host's containment can be shown.

Modes starting with `export_` / `import_` speak protocol version 2 (migration): they export
the files under `data/` in their data folder, or import a folder into it, well or badly.
Every mode writes the `initialize` params it got to `init.json` in its working folder.
"""

import json
import os
import signal
import sys
import time
import uuid

MODE = sys.argv[1] if len(sys.argv) > 1 else "good"
_next_id = [100]
_pending = []  # requests from Ferry that arrived while waiting for an answer


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def read():
    if _pending:
        return _pending.pop(0)
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return json.loads(line)


def call(method, params=None):
    _next_id[0] += 1
    rid = _next_id[0]
    send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
    while True:
        msg = sys.stdin.readline()
        if not msg:
            sys.exit(0)
        msg = json.loads(msg)
        if msg.get("id") == rid and "method" not in msg:
            if "error" in msg:
                raise RpcError(msg["error"])
            return msg["result"]
        _pending.append(msg)


def next_answer():
    """The next answer from Ferry (to a line that has no id of ours to wait for)."""
    while True:
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)
        msg = json.loads(line)
        if "method" not in msg:
            return msg
        _pending.append(msg)


class RpcError(Exception):
    def __init__(self, err):
        super().__init__(err.get("message"))
        data = err.get("data") or {}
        self.number = err.get("code")
        self.code = data.get("code")
        self.reason = data.get("reason")
        self.index = data.get("index")
        self.job = data.get("job")


def uuid7():
    ms = int(time.time() * 1000)
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def answer(rid, status, message=None):
    result = {"status": status}
    if message:
        result["message"] = message
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def create_item(init, resource):
    base = init["destination_bases"][0].rstrip("/")
    return {
        "op": "create",
        "id": uuid7(),
        "resource_id": resource["id"],
        "content_hash": resource["content_hash"],
        "destination": {"method": "PUT", "url": base + "/" + resource["id"], "headers": []},
        "metadata": {},
    }


def good(init, rid):
    """Acknowledge finished jobs, then create jobs for the next page of resources."""
    acks = call("jobs.fetch", {"action": "acknowledge"})["jobs"]
    if acks:
        call("jobs.transaction", {"items": [{"op": "acknowledge", "job": j["id"]} for j in acks]})
    cursor = call("kv.get", {"key": "cursor"})["value"]
    while True:
        available = call("jobs.limit")["available"]
        if available == 0:
            return answer(rid, "processing", "at the job limit")
        params = {"limit": min(available, 100)}
        if cursor:
            params["after"] = cursor
        page = call("library.list_assets", params)
        items = []
        for asset in page["assets"]:
            for r in asset["resources"]:
                items.append(create_item(init, r))
        if items:
            call("jobs.transaction", {"items": items[: max(available, 1)]})
        if page["assets"]:
            cursor = page["assets"][-1]["id"]
            call("kv.set", {"key": "cursor", "value": cursor})
        if not page.get("next_after"):
            return answer(rid, "completed", "up to date")


def misbehave(init, rid):
    if MODE == "hang" or MODE == "ignore_term":
        while True:
            time.sleep(3600)
    if MODE == "crash_mid_transaction":
        page = call("library.list_assets", {"limit": 5})
        items = [create_item(init, r) for a in page["assets"] for r in a["resources"]]
        send({"jsonrpc": "2.0", "id": 9999, "method": "jobs.transaction", "params": {"items": items}})
        os._exit(7)
    if MODE == "garbage":
        # Garbage forever: lines that are not JSON and lines that are not JSON-RPC, in turn.
        # Each answer's code goes to `answers` (in the working folder) before the next line.
        with open("pid", "w") as f:
            f.write(str(os.getpid()))
        n = 0
        while True:
            n += 1
            if n % 2:
                sys.stdout.write("this is not JSON {{{ %d\n" % n)
            else:
                sys.stdout.write(json.dumps({"jsonrpc": "1.0", "id": n, "method": "jobs.limit"}) + "\n")
            sys.stdout.flush()
            got = next_answer()
            with open("answers", "a") as f:
                f.write(json.dumps([got.get("id"), (got.get("error") or {}).get("code")]) + "\n")
    if MODE == "bad_lines":
        # One line that is not JSON, one JSON-RPC 1.0 request, one request without a method;
        # then the call goes on as usual. The answers come back in the call's message.
        answers = []
        for line in [
            "this is not JSON {{{",
            json.dumps({"jsonrpc": "1.0", "id": "old", "method": "jobs.limit", "params": {}}),
            json.dumps({"jsonrpc": "2.0", "id": "no-method", "params": {}}),
        ]:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            answers.append(next_answer())
        limit = call("jobs.limit")
        return answer(rid, "completed", json.dumps({"answers": answers, "limit": limit}))
    if MODE == "bad_method":
        # Destinations with methods Ferry cannot send with, in a create and in a retry.
        page = call("library.list_assets", {"limit": 2})
        rs = [r for a in page["assets"] for r in a["resources"]]
        results = {}

        def attempt(name, items):
            try:
                call("jobs.transaction", {"items": items})
                results[name] = "committed"
            except RpcError as e:
                results[name] = {"code": e.number, "name": e.code, "reason": e.reason,
                                 "index": e.index, "job": e.job}

        fine, get = create_item(init, rs[0]), create_item(init, rs[1])
        get["destination"]["method"] = "GET"
        attempt("create", [fine, get])
        retry = {"op": "retry", "job": init["config"]["failed_job"],
                 "destination": dict(fine["destination"], method="DELETE")}
        attempt("retry", [{"op": "acknowledge", "job": init["config"]["done_job"]}, retry])
        odd = create_item(init, rs[1])
        odd["destination"]["method"] = 7
        attempt("not_a_string", [fine, odd])
        return answer(rid, "completed", json.dumps({"results": results, "ids": [fine["id"], get["id"]]}))
    if MODE == "long_line":
        sys.stdout.write("[" + "1," * (1024 * 1024) + "1]\n")
        sys.stdout.flush()
        time.sleep(3600)
    if MODE == "spam":
        junk = "spam " * 2000 + "\n"
        for _ in range(2000):
            sys.stderr.write(junk)
        while True:
            send({"jsonrpc": "2.0", "method": "hello", "params": {"x": "y" * 100}})
    if MODE == "flood_requests":
        # Floods requests and never reads an answer.
        n = 0
        while True:
            n += 1
            send({"jsonrpc": "2.0", "id": 10_000 + n, "method": "jobs.limit", "params": {}})
    if MODE == "unknown_method":
        try:
            call("library.delete_everything", {})
            return answer(rid, "completed", "unexpectedly allowed")
        except RpcError as e:
            return answer(rid, "failure", "refused: " + str(e.code))
    if MODE == "over_limit":
        page = call("library.list_assets", {"limit": 1000})
        items = [create_item(init, r) for a in page["assets"] for r in a["resources"]]
        items = items[: init["job_limit"] + 1]
        try:
            call("jobs.transaction", {"items": items})
            return answer(rid, "completed", "unexpectedly allowed")
        except RpcError as e:
            return answer(rid, "failure", "refused: " + str(e.reason))
    if MODE == "out_of_scope":
        target = init["config"]["foreign_resource"]
        item = {
            "op": "create",
            "id": uuid7(),
            "resource_id": target["id"],
            "content_hash": target["content_hash"],
            "destination": {"method": "PUT", "url": init["destination_bases"][0] + "/x", "headers": []},
            "metadata": {},
        }
        try:
            call("jobs.transaction", {"items": [item]})
            return answer(rid, "completed", "unexpectedly allowed")
        except RpcError as e:
            return answer(rid, "failure", "refused: " + str(e.reason))
    if MODE == "bad_destination":
        page = call("library.list_assets", {"limit": 1})
        item = create_item(init, page["assets"][0]["resources"][0])
        item["destination"]["url"] = "http://127.0.0.1:9/elsewhere/x"
        try:
            call("jobs.transaction", {"items": [item]})
            return answer(rid, "completed", "unexpectedly allowed")
        except RpcError as e:
            return answer(rid, "failure", "refused: " + str(e.reason))
    if MODE == "fork_linger":
        pid = os.fork()
        if pid == 0:
            # The child keeps the pipes open and outlives its parent.
            while True:
                time.sleep(3600)
        with open("child.pid", "w") as f:
            f.write(str(pid))
        answer(rid, "completed", "forked")
        os._exit(0)
    return answer(rid, "failure", "unknown mode " + MODE)


V2 = MODE.startswith("export_") or MODE.startswith("import_")


def data_files():
    """(path, path_in_archive) of every file under data/, sorted."""
    out = []
    for root, dirs, files in os.walk("data"):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(root, f)
            out.append((path, path))
    return out


def append(path, name):
    return call("archive.append", {"path": path, "path_in_archive": name})


def preflight(init, rid):
    size = sum(os.path.getsize(p) for p, _ in data_files())
    if MODE == "export_liar":
        size = 10
    send({"jsonrpc": "2.0", "id": rid,
          "result": {"size_estimate_bytes": size, "data_version": "zoo-1", "compressible": True}})


def export(init, rid):
    with open("pid", "w") as f:
        f.write(str(os.getpid()))
    files = data_files()
    if MODE == "export_hang":
        append(*files[0])
        while True:
            time.sleep(3600)
    if MODE == "export_stubborn":
        # Appends forever, whatever Ferry answers (cancelled included).
        n = 0
        while True:
            n += 1
            try:
                append(files[0][0], "copy-%d" % n)
            except RpcError:
                pass
    if MODE == "export_bad":
        cfg = init["config"]
        tries = [
            ("outside", cfg["outside_file"], "x"),
            ("escape", "data/../../" + os.path.basename(cfg["outside_file"]), "y"),
            ("symlink", "link", "z"),
            ("symlinked_dir", "linkdir/secret.txt", "w"),
            ("absolute_name", files[0][0], "/abs"),
            ("dotdot_name", files[0][0], "data/../x"),
            ("dot_name", files[0][0], "./x"),
            ("empty_name", files[0][0], ""),
            ("folder", "data", "folder"),
        ]
        report = []
        for label, path, name in tries:
            try:
                append(path, name)
                report.append([label, "accepted"])
            except RpcError as e:
                report.append([label, e.code])
        append(*files[0])
        try:
            append(*files[0])
            report.append(["duplicate", "accepted"])
        except RpcError as e:
            report.append(["duplicate", e.code])
        try:
            append(files[0][0], files[0][1] + "/under")
            report.append(["under_a_file", "accepted"])
        except RpcError as e:
            report.append(["under_a_file", e.code])
        with open(cfg["report"], "w") as f:
            json.dump(report, f)
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
        return
    if MODE == "export_fails":
        append(*files[0])
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": "disk on fire",
                                                     "data": {"code": "internal_error"}}})
        return
    for path, name in files:
        try:
            append(path, name)
        except RpcError as e:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": str(e.code),
                                                         "data": {"code": "internal_error"}}})
            return
    send({"jsonrpc": "2.0", "id": rid, "result": {}})


def do_import(init, rid, params):
    if MODE == "import_crash":
        os._exit(5)
    if MODE == "import_fail":
        # Half an import, then an error: Ferry must wipe what was written.
        with open("half.txt", "w") as f:
            f.write("half")
        call("kv.set", {"key": "half", "value": "1"})
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": "cannot read it",
                                                     "data": {"code": "internal_error"}}})
        return
    src = params["dir"]
    for root, dirs, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), src)
            os.makedirs(os.path.dirname(rel) or ".", exist_ok=True)
            with open(os.path.join(root, f), "rb") as a, open(rel, "wb") as b:
                b.write(a.read())
    call("kv.set", {"key": "imported_from", "value": json.dumps(params["source"])})
    send({"jsonrpc": "2.0", "id": rid, "result": {}})


def report_migration(init, rid):
    """process_jobs of an import mode: what initialize said, what is here, then clear."""
    files = []
    for root, dirs, fs in os.walk("."):
        for f in fs:
            files.append(os.path.relpath(os.path.join(root, f), "."))
    try:
        call("archive.append", {"path": "init.json", "path_in_archive": "x"})
        append_code = "accepted"
    except RpcError as e:
        append_code = e.code
    keys = call("kv.list", {"prefix": ""})["keys"]
    call("migration.clear_status", {})
    answer(rid, "completed", json.dumps({"migration": init.get("migration"), "files": sorted(files),
                                         "kv": keys, "append": append_code}))


def v1_probe(init, rid):
    """A version 1 extension that tries the version 2 methods: unknown to it."""
    codes = {}
    for method in ("migration.clear_status", "archive.append"):
        try:
            call(method, {"path": "init.json", "path_in_archive": "x"})
            codes[method] = "accepted"
        except RpcError as e:
            codes[method] = e.code
    answer(rid, "completed", json.dumps(codes))


def main():
    if MODE == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE == "crash_at_start":
        sys.exit(3)
    with open("launches", "a") as f:
        f.write(MODE + "\n")
    init = None
    while True:
        msg = read()
        method = msg.get("method")
        if method == "initialize":
            init = msg["params"]
            with open("init.json", "w") as f:
                json.dump(init, f)
            version = min(init["protocol_version"], 2) if V2 else 1
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocol_version": version}})
        elif method == "migration.preflight":
            preflight(init, msg["id"])
        elif method == "migration.export":
            export(init, msg["id"])
        elif method == "migration.import":
            do_import(init, msg["id"], msg["params"])
        elif method == "process_jobs":
            if MODE == "good":
                good(init, msg["id"])
            elif MODE.startswith("import_"):
                report_migration(init, msg["id"])
            elif MODE == "v1_probe":
                v1_probe(init, msg["id"])
            else:
                misbehave(init, msg["id"])
        elif method == "will_terminate":
            pass
        elif "id" in msg and method:
            send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}})


if __name__ == "__main__":
    main()
