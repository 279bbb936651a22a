#!/usr/bin/env python3
"""Prints the tables of benches/scale.sh from its results file (db, op, tool, wall s, RSS MiB
per line, tab-separated). Usage: scale_table.py RESULTS NPROC LOADAVG RUNS"""
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = collections.OrderedDict()
for db, op, tool, w, rss in rows:
    by.setdefault(db, []).append((op, tool, float(w), int(rss)))
print(f"\nscale benchmark: etcd 3.5, median of {sys.argv[4]} run(s), {sys.argv[2]} CPUs, load {sys.argv[3]}")
for db, rs in by.items():
    t = {tool: (w, rss) for _, tool, w, rss in rs}
    def ratio(tool):
        w = t[tool][0]
        if tool.startswith("etcd-lifeboat status --skip"):
            b = t.get("etcdctl snapshot status"); return (w / b[0], "<= 0.5x etcdctl status") if b else None
        if tool.startswith("etcd-lifeboat backup, local"):
            b = t.get("etcdctl snapshot save"); return (w / b[0], "<= 1.15x etcdctl save") if b else None
        if tool.startswith("etcd-lifeboat backup, S3"):
            b = t.get("etcdctl snapshot save"); return (w / b[0], "<= 1.3x etcdctl save") if b else None
        if tool == "etcd-lifeboat restore":
            u, c = t.get("etcdutl snapshot restore"), t.get("cp + fsync (floor)")
            if not (u and c):
                return None
            # On a file system with reflinks (XFS, btrfs) cp clones the db in no time; the
            # restore's floor is then its sha256 pass, timed by `status` with the hash.
            floor = f"{w / c[0]:.2f}x cp+fsync (<= 1.5x)" if c[0] >= 0.05 else "cp reflinked (0 s)"
            h = t.get("etcd-lifeboat status (sha256 too)")
            if h:
                floor += f"; {w / h[0]:.2f}x its sha256 pass"
            return (w / u[0], f"<= 0.3x etcdutl; {floor}")
        if tool.endswith(", S3") and tool.startswith("etcd-lifeboat"):
            loc = tool.replace(", S3", ", local store" if "verify" in tool else ", local")
            b = t.get(loc); return (w / b[0], "<= 1.5x local store") if b else None
        return None
    print(f"\n{db}\n| op | tool | wall s | peak RSS MiB | ratio | target |")
    print("|---|---|---:|---:|---:|---|")
    for op, tool, w, rss in rs:
        r = ratio(tool)
        limit = 100 if "S3" in tool else 64
        rtxt, target = (f"{r[0]:.2f}x", r[1]) if r else ("", "")
        if tool.startswith("etcd-lifeboat"):
            target = (target + "; " if target else "") + f"RSS <= {limit}" + (" MISS" if rss > limit else "")
        print(f"| {op} | {tool} | {w:.2f} | {rss} | {rtxt} | {target} |")
