#!/usr/bin/python3
"""check_layout.py - the repository's layout rules, checked mechanically.

  check_layout.py BUILD_OBJ_DIR

1. common/ never includes a header of worker/ or producer-tool/ (common/ is
   linked into every program and must not know their types).
2. No call circle between the files of one folder: file A calls a function
   defined in file B and B (perhaps through others) calls one in A.  Read
   from the compiled objects (`nm`: the symbols each defines and uses), so
   it sees every call the linker sees, macros and all.
3. No include circle between headers.
4. No source file in common/, worker/ or producer-tool/ over MAX_LINES
   lines, unless listed in ONE_CONCEPT with the reason it is one concept.

Exits 1 and names every violation."""
import os
import re
import subprocess
import sys

MAX_LINES = 700
ONE_CONCEPT = {
    # file: why it may be longer
    "common/job_codec.c": "the job wire format, decoded and encoded: each field's two sides "
                          "side by side",
    "common/model_file.c": "the model file format, decoded and encoded, both kinds: one set of "
                           "strict field rules (keys, names, acts, versions) for mlp and ensemble",
}
FOLDERS = ["common", "worker", "producer-tool"]

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
objdir = sys.argv[1] if len(sys.argv) > 1 else "build/obj"
errors = []


def sources(folder, exts=(".c", ".h")):
    d = os.path.join(root, folder)
    return sorted(f for f in os.listdir(d) if f.endswith(exts))


def includes(path):
    with open(path, encoding="utf-8") as fp:
        return re.findall(r'^\s*#\s*include\s+"([^"]+)"', fp.read(), re.M)


# 1. common/ knows nobody else's headers
theirs = {h for f in ("worker", "producer-tool") for h in sources(f, (".h",))}
ours = set(sources("common", (".h",)))
for f in sources("common"):
    for inc in includes(os.path.join(root, "common", f)):
        base = os.path.basename(inc)
        if "/" in inc or (base in theirs and base not in ours):
            errors.append(f"common/{f} includes \"{inc}\": common/ must not know worker/ or "
                          "producer-tool/")


def cycles(graph):
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# 2. call circles, per folder, from the objects
for folder in FOLDERS:
    defs, uses = {}, {}
    for f in sources(folder, (".c",)):
        obj = os.path.join(objdir, folder, f[:-2] + ".o")
        if not os.path.exists(obj):
            errors.append(f"{obj}: not built (run make first)")
            continue
        nm = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
        uses[f] = set()
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TDBR":
                defs[parts[2]] = f
            elif len(parts) == 2 and parts[0] == "U":
                uses[f].add(parts[1])
    graph = {f: {defs[s] for s in u if s in defs and defs[s] != f} for f, u in uses.items()}
    for comp in cycles(graph):
        why = []
        for a in comp:
            for b in comp:
                syms = sorted(s for s in uses[a] if defs.get(s) == b)
                if syms:
                    why.append(f"{a} -> {b} ({', '.join(syms[:3])})")
        errors.append(f"call circle in {folder}/: " + "; ".join(why))

# 3. include circles between headers (all folders: names are unique)
hdr = {}
for folder in FOLDERS:
    for h in sources(folder, (".h",)):
        hdr[h] = {os.path.basename(i) for i in includes(os.path.join(root, folder, h))}
for comp in cycles({h: {i for i in inc if i in hdr and i != h} for h, inc in hdr.items()}):
    errors.append("include circle: " + " -> ".join(comp))

# 4. file sizes
for folder in FOLDERS:
    for f in sources(folder):
        with open(os.path.join(root, folder, f), encoding="utf-8") as fp:
            n = sum(1 for _ in fp)
        key = f"{folder}/{f}"
        if n > MAX_LINES and key not in ONE_CONCEPT:
            errors.append(f"{key}: {n} lines (over {MAX_LINES}): split it by concept, or list "
                          "it in ONE_CONCEPT with the reason it is one")

for e in errors:
    print("layout: " + e)
if errors:
    sys.exit(1)
print("layout: ok (common/ stands alone; no call or include circles; no file over "
      f"{MAX_LINES} lines in common/, worker/ or producer-tool/)")
