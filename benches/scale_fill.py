#!/usr/bin/env python3
"""Fills an etcd 3.5 member through its JSON gateway (/v3/kv/txn) until its db reaches a size.

Used by benches/scale.sh to build the cached benchmark dbs. Writes with THREADS parallel
connections (default 4), one txn of at most 128 puts per request (etcd's --max-txn-ops).

Usage: scale_fill.py ENDPOINT SHAPE TARGET_BYTES
  ENDPOINT  http://127.0.0.1:PORT (plain HTTP)
  SHAPE     big: random 64 KiB values, 16 per txn (1 MiB requests), keys /bench/%08d
            k8s: Kubernetes-like keyspace: /registry/<resource>/<ns>/<name>, values of
                 0.5-8 KiB (half random bytes, half repeated text, like protobuf objects with
                 managed fields), new keys and overwrites (70/25) and deletes (5%), and a
                 compaction every 100000 revisions (as the API server does every 5 minutes)
  TARGET_BYTES  stop once the member's dbSize (Maintenance/Status) reaches it
Prints progress on stderr and "keys=N revision=R db_bytes=B seconds=S" at the end.
"""
import base64
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse

endpoint, shape, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
THREADS = int(os.environ.get("THREADS", "4"))
u = urllib.parse.urlparse(endpoint)
b64 = lambda b: base64.b64encode(b).decode()

RESOURCES = ["pods", "events", "configmaps", "secrets", "leases", "endpointslices",
             "replicasets", "deployments", "services", "serviceaccounts"]
FILLER = (b'{"apiVersion":"v1","metadata":{"managedFields":[{"manager":"kube-controller-manager",'
          b'"operation":"Update","fieldsType":"FieldsV1"}]},"status":{"phase":"Running"}}')


class Conn:
    def __init__(self):
        self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)

    def post(self, path, body):
        data = json.dumps(body).encode()
        for attempt in range(5):
            try:
                self.c.request("POST", path, data, {"Content-Type": "application/json"})
                r = self.c.getresponse()
                out = r.read()
                if r.status != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status}: {out[:300]!r}")
                return json.loads(out)
            except (http.client.HTTPException, OSError):
                self.c.close()
                self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
                time.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"{path}: failed after retries")


def db_size(c):
    return int(c.post("/v3/maintenance/status", {})["dbSize"])


lock = threading.Lock()
state = {"next": 0, "done": False, "keys": 0, "rev": 0, "last_compact": 0}


def take(n):
    with lock:
        i = state["next"]
        state["next"] += n
        return i


def k8s_value(rng):
    size = rng.choice([512, 1024, 1536, 2048, 3072, 4096, 8192])
    half = size // 2
    return rng.randbytes(half) + (FILLER * (half // len(FILLER) + 1))[: size - half]


def k8s_key(i):
    res = RESOURCES[i % len(RESOURCES)]
    return f"/registry/{res}/ns-{(i // 10) % 500:03d}/obj-{i:09d}".encode()


def worker(seed):
    rng = random.Random(seed)
    c = Conn()
    while not state["done"]:
        ops = []
        if shape == "big":
            first = take(16)
            for i in range(first, first + 16):
                ops.append({"requestPut": {"key": b64(b"/bench/%08d" % i),
                                           "value": b64(rng.randbytes(64 * 1024))}})
        else:
            first = take(128)
            for i in range(first, first + 128):
                r = rng.random()
                if r < 0.70 or i < 20000:
                    ops.append({"requestPut": {"key": b64(k8s_key(i)), "value": b64(k8s_value(rng))}})
                elif r < 0.95:
                    ops.append({"requestPut": {"key": b64(k8s_key(rng.randrange(i))),
                                               "value": b64(k8s_value(rng))}})
                else:
                    ops.append({"requestDeleteRange": {"key": b64(k8s_key(rng.randrange(i)))}})
            # Distinct keys per txn (etcd rejects a txn touching a key twice).
            seen, uniq = set(), []
            for op in ops:
                k = next(iter(op.values()))["key"]
                if k not in seen:
                    seen.add(k)
                    uniq.append(op)
            ops = uniq
        out = c.post("/v3/kv/txn", {"success": ops})
        rev = int(out["header"]["revision"])
        with lock:
            state["keys"] += len(ops)
            state["rev"] = max(state["rev"], rev)


def main():
    c = Conn()
    start = time.time()
    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(THREADS)]
    for t in threads:
        t.start()
    last = 0
    while True:
        time.sleep(2)
        size = db_size(c)
        if shape == "k8s" and state["rev"] - state["last_compact"] >= 100000:
            c.post("/v3/kv/compaction", {"revision": str(state["rev"])})
            state["last_compact"] = state["rev"]
        if time.time() - last > 30:
            last = time.time()
            print(f"  {shape}: {size / 2**20:.0f} MiB of {target / 2**20:.0f} MiB, "
                  f"{state['keys']} ops, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        if size >= target:
            break
        if not any(t.is_alive() for t in threads):
            raise SystemExit("all writers died")
    state["done"] = True
    for t in threads:
        t.join()
    print(f"keys={state['keys']} revision={state['rev']} db_bytes={db_size(c)} "
          f"seconds={time.time() - start:.0f}")


main()
