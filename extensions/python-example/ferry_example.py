#!/usr/bin/env python3
"""A Ferry extension in Python, standard library only: proof that the protocol
(docs/protocol.md) needs no Rust. It uploads every resource of the library to one
destination from its config, one transaction per asset, up to the job limit.

Config (the manifest's [config]):
    upload_url     where each resource is sent (POST), e.g. "https://example.org/v1/uploads"
    authorization  optional value of the Authorization header

Migration (protocol version 2, when the manifest lists "export" / "import"): it keeps a small
settings.json in its data folder (FERRY_EXTENSION_DATA_DIR), exports every file of that folder
with archive.append, imports a folder by copying its files in, and reports the import status
Ferry gives in initialize in its next answer, then clears it.
"""

import json
import os
import shutil
import sys
import uuid

# Version 1 is all a plain upload extension needs; Ferry offers 2 only to a manifest that asks
# for migration, and this script answers what it is offered (1 or 2).
PROTOCOL_VERSIONS = (1, 2)
MAX_LINE = 1024 * 1024
# Ferry's own log of this extension, in the data folder but not the extension's data.
LOG_FILE = "stderr.log"


def data_dir():
    return os.environ.get("FERRY_EXTENSION_DATA_DIR", ".")


def data_files():
    """(path, path_in_archive) of every file of the data folder, sorted; links are skipped
    (Ferry refuses them anyway)."""
    base = data_dir()
    out = []
    for root, dirs, files in os.walk(base):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(root, f)
            name = os.path.relpath(path, base).replace(os.sep, "/")
            if name == LOG_FILE or os.path.islink(path):
                continue
            out.append((path, name))
    return out


def log(*args):
    # stderr is the extension's log; stdout carries only protocol lines.
    print("python-example:", *args, file=sys.stderr, flush=True)


class HostError(Exception):
    """An error answer from Ferry; `name` is the stable data.code."""

    def __init__(self, method, error):
        self.method = method
        self.error = error if isinstance(error, dict) else {}
        data = self.error.get("data") if isinstance(self.error.get("data"), dict) else {}
        self.name = data.get("code")
        self.reason = data.get("reason")
        super().__init__(f"{method}: {self.error.get('message')} ({self.name})")

    def transient(self):
        return self.name in ("internal_error", "rate_limited", "unavailable")


class Closed(Exception):
    """Ferry closed our stdin."""


class Conn:
    def __init__(self, inp, out):
        self.inp = inp
        self.out = out
        self.next_id = 0
        self.terminating = False

    def send(self, msg):
        msg["jsonrpc"] = "2.0"
        self.out.write(json.dumps(msg, separators=(",", ":")) + "\n")
        self.out.flush()

    def read(self):
        """The next message, skipping lines that are not JSON-RPC objects."""
        while True:
            line = self.inp.readline(MAX_LINE + 2)
            if not line:
                raise Closed()
            if len(line) > MAX_LINE + 1:
                log("dropped an over-long line")
                # Consume the rest of it.
                while line and not line.endswith("\n"):
                    line = self.inp.readline(MAX_LINE)
                continue
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                log("ignored a line that is not JSON")
                continue
            if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
                log("ignored a line that is not JSON-RPC 2.0")
                continue
            if "method" not in msg and msg.get("id") is None:
                # Ferry could not read a line of ours (not JSON, or not JSON-RPC) and says so
                # with a null id: no call of ours waits for it. Log it and carry on.
                error = msg.get("error") if isinstance(msg.get("error"), dict) else {}
                log("Ferry could not read a line of ours:", error.get("message"))
                continue
            if msg.get("method") == "will_terminate" and "id" not in msg:
                # Seen at once, even in the middle of our own calls.
                self.terminating = True
            return msg

    def call(self, method, params=None):
        self.next_id += 1
        my_id = self.next_id
        self.send({"id": my_id, "method": method, "params": params or {}})
        while True:
            msg = self.read()
            if "method" in msg:
                if "id" in msg:
                    # Ferry never starts a call while ours is open; answer, don't crash.
                    self.send({"id": msg["id"], "error": {
                        "code": -32600, "message": "a call is still running",
                        "data": {"code": "invalid_request"}}})
                continue
            if msg.get("id") != my_id:
                continue
            if "error" in msg:
                raise HostError(method, msg["error"])
            return msg.get("result")


class Example:
    def __init__(self, conn):
        self.conn = conn
        self.destination = None
        self.import_status = None

    def initialize(self, params):
        config = params.get("config") or {}
        url = config.get("upload_url")
        if not isinstance(url, str):
            raise ValueError("config.upload_url is required")
        headers = []
        if isinstance(config.get("authorization"), str):
            headers.append(["authorization", config["authorization"]])
        self.destination = {"method": "POST", "url": url, "headers": headers}
        migration = params.get("migration") or {}
        self.import_status = migration.get("import_status")
        if self.import_status:
            log("import status:", json.dumps(self.import_status))
        # The extension's own small state on disk, which is what a migration carries over.
        # Only in the data folder Ferry gives it: never in whatever folder it was started in.
        settings = os.path.join(data_dir(), "settings.json")
        if "FERRY_EXTENSION_DATA_DIR" in os.environ and not os.path.exists(settings):
            tmp = settings + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"upload_url": url}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, settings)

    # ---- migration (protocol version 2) ----

    def preflight(self, params):
        size = sum(os.path.getsize(p) for p, _ in data_files())
        return {"size_estimate_bytes": size, "data_version": "1", "compressible": True}

    def export(self, params):
        for path, name in data_files():
            if self.conn.terminating:
                raise ValueError("cancelled by Ferry")
            # Ferry answers once the bytes are safely copied.
            self.conn.call("archive.append", {"path": path, "path_in_archive": name})
        return {}

    def import_(self, params):
        src = params["dir"]
        for root, dirs, files in os.walk(src):
            for f in files:
                path = os.path.join(root, f)
                rel = os.path.relpath(path, src)
                dest = os.path.join(data_dir(), rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(path, dest)
        return {}

    def fetch_all(self, action):
        jobs, after = [], None
        while True:
            params = {"action": action}
            if after:
                params["after"] = after
            page = self.conn.call("jobs.fetch", params)
            jobs.extend(page["jobs"])
            after = page.get("next_after")
            if not after:
                return jobs

    def process_jobs(self, params):
        c = self.conn
        done = {"acknowledged": 0, "created": 0}
        if self.import_status:
            # Acted on (logged, reported once): Ferry stops reporting it.
            done["import_status"] = self.import_status["status"]
            c.call("migration.clear_status")
            self.import_status = None
        # Acknowledge finished jobs (this example records nothing from them).
        finished = self.fetch_all("acknowledge")
        if finished:
            c.call("jobs.transaction",
                   {"items": [{"op": "acknowledge", "job": j["id"]} for j in finished]})
            done["acknowledged"] = len(finished)
        live = {(j["resource_id"], j["content_hash"]) for j in self.fetch_all("process")}

        # Where this pass stands: changes since the saved token (or, first time, a full
        # pass), up to a fixed `until`, assets done up to `after` (both orders are by id).
        cursor = c.call("kv.get", {"key": "cursor"})["value"]
        if cursor:
            cursor = json.loads(cursor)
        else:
            saved = c.call("kv.get", {"key": "token"})["value"]
            cursor = {"since": saved, "until": None, "after": None}
        try:
            if cursor["since"] is None:
                raise HostError("start", {"data": {"code": "change_token_expired"}})
            ids, offset = [], 0
            while True:
                params = {"since": cursor["since"], "offset": offset}
                if cursor["until"]:
                    params["until"] = cursor["until"]
                page = c.call("library.changes", params)
                cursor["until"] = page["until"]
                ids += [ch["asset_id"] for ch in page["changes"]
                        if ch["kind"] != "deleted"
                        and (cursor["after"] is None or ch["asset_id"] > cursor["after"])]
                if page.get("next_offset") is None:
                    break
                offset = page["next_offset"]
            assets = []
            for i in range(0, len(ids), 1000):
                assets += c.call("library.assets", {"ids": ids[i:i + 1000]})["assets"]
        except HostError as e:
            if e.name not in ("change_token_expired", "invalid_token"):
                raise
            if cursor["since"] is not None or cursor["until"] is None:
                # Resynchronise: a full pass, then continue from the token taken now.
                cursor = {"since": None, "after": None,
                          "until": c.call("library.current_token")["token"]}
            assets, after = [], cursor["after"]
            while True:
                page = c.call("library.list_assets", {"after": after} if after else {})
                assets += page["assets"]
                after = page.get("next_after")
                if not after:
                    break

        available = c.call("jobs.limit")["available"]
        for asset in assets:
            items = [{
                "op": "create", "id": str(uuid.uuid4()), "resource_id": r["id"],
                "content_hash": r["content_hash"], "destination": self.destination,
                "metadata": {"asset_id": asset["id"], "resource_type": r["resource_type"]},
            } for r in asset["resources"] if (r["id"], r["content_hash"]) not in live]
            if c.terminating or len(items) > available:
                # Out of time or slots: remember how far this pass got.
                c.call("kv.set", {"key": "cursor", "value": json.dumps(cursor)})
                status = "processing" if done["created"] or c.terminating else "completed"
                return {"status": status, "message": json.dumps(done)}
            if items:
                # One transaction per asset: a Live Photo or RAW+JPEG pair stays together.
                c.call("jobs.transaction", {"items": items})
                available -= len(items)
                done["created"] += len(items)
            cursor["after"] = asset["id"]
        c.call("kv.set", {"key": "token", "value": cursor["until"]})
        c.call("kv.set", {"key": "cursor", "value": None})
        return {"status": "completed", "message": json.dumps(done)}


MIGRATION_CALLS = {
    "migration.preflight": "preflight",
    "migration.export": "export",
    "migration.import": "import_",
}


def main():
    conn = Conn(sys.stdin, sys.stdout)
    ext = Example(conn)
    initialized = False
    version = 1
    while True:
        try:
            msg = conn.read()
        except Closed:
            return 0
        method, msg_id = msg.get("method"), msg.get("id")
        if method is None or msg_id is None:
            continue  # a stray answer or a notification between calls
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        try:
            if method == "initialize":
                offered = params.get("protocol_version")
                if offered not in PROTOCOL_VERSIONS:
                    conn.send({"id": msg_id, "error": {
                        "code": -32602, "message": f"protocol version {offered} not spoken",
                        "data": {"code": "invalid_params"}}})
                    return 1
                ext.initialize(params)
                initialized = True
                version = offered
                result = {"protocol_version": offered}
            elif method == "process_jobs" and initialized:
                conn.terminating = False
                result = ext.process_jobs(params)
            elif method in MIGRATION_CALLS and initialized and version >= 2:
                conn.terminating = False
                try:
                    result = getattr(ext, MIGRATION_CALLS[method])(params)
                except (HostError, OSError, ValueError, KeyError, TypeError) as e:
                    # An error answer: Ferry leaves the export out, or wipes a half import.
                    log("error:", repr(e))
                    conn.send({"id": msg_id, "error": {
                        "code": -32603, "message": str(e), "data": {"code": "internal_error"}}})
                    continue
            else:
                conn.send({"id": msg_id, "error": {
                    "code": -32601, "message": f"unknown method {method}",
                    "data": {"code": "method_not_found"}}})
                continue
        except Closed:
            return 0
        except HostError as e:
            log(e)
            status = "processing" if e.transient() else "failure"
            result = {"status": status, "message": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            log("error:", repr(e))
            if method == "initialize":
                conn.send({"id": msg_id, "error": {
                    "code": -32603, "message": str(e), "data": {"code": "internal_error"}}})
                return 1
            result = {"status": "failure", "message": repr(e)}
        conn.send({"id": msg_id, "result": result})


if __name__ == "__main__":
    sys.exit(main())
