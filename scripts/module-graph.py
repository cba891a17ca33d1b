#!/usr/bin/env python3
"""The crate's import graph, read from the source: which file uses which, and any cycle.

    scripts/module-graph.py            # top-level modules and what each one imports; cycles; exit 1 if any
    scripts/module-graph.py --files    # the same, file by file

An edge A -> B means a `use` or a path in A names an item of B (`crate::…`, `super::…`, `self::…`;
`ci_worker::…` in main.rs). `mod x;` declarations are not edges: a parent that only declares and
re-exports its children does not depend on them in the sense that matters here (it holds none of
their logic), but a re-export (`pub use child::X`) is an edge, so a child that reaches back into its
parent's items closes a cycle. Test modules count too: a test that imports its caller is a cycle.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(rel):
    """src-relative path -> module path tuple ('' for the crate root)."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    # Line comments (doc comments included) and string literals hold prose, not imports.
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def expand_use(tree):
    """`a::{b, c::{d, e as f}, self}` -> [a::b, a::c::d, a::c::e, a]."""
    tree = tree.strip()
    if "{" not in tree:
        tree = re.sub(r"\s+as\s+" + IDENT + "$", "", tree)
        return [tree.rstrip(":*").rstrip(":")]
    head, _, rest = tree.partition("{")
    body = rest[: rest.rfind("}")]
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    head = head.rstrip(":")
    for item in items:
        item = item.strip()
        if not item:
            continue
        for sub in expand_use(item):
            out.append(head if sub == "self" else f"{head}::{sub}")
    return out


def references(text, children=()):
    """(path string, is_in_test_module) for every crate-relative path in a file; `children` are the
    names of the file's child modules, which code may name without `self::`."""
    refs = []
    test_start = None
    m = re.search(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+tests\s*\{", text)
    if m:
        test_start = m.start()
    for m in re.finditer(r"\b(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
        for path in expand_use(m.group(1)):
            refs.append((path, test_start is not None and m.start() > test_start))
    for m in re.finditer(r"\b((?:crate|super|self|ci_worker)(?:::" + IDENT + ")+)", text):
        refs.append((m.group(1), test_start is not None and m.start() > test_start))
    for m in re.finditer(r"(?<![:\w])(" + IDENT + r")::" + IDENT, text):
        if m.group(1) in children:
            refs.append(("self::" + m.group(0), test_start is not None and m.start() > test_start))
    return refs


def resolve(path, here, in_test, modules):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] in ("crate", "ci_worker"):
        base, segs = (), segs[1:]
    elif segs[0] == "self":
        base, segs = here, segs[1:]
    elif segs[0] == "super":
        base = here
        # Inside a file's `mod tests`, `super` is the file's own module.
        first = True
        while segs and segs[0] == "super":
            if not (first and in_test):
                base = base[:-1]
            first = False
            segs = segs[1:]
    elif here + (segs[0],) in modules:
        base = here  # `use child::X` in a parent (2018 paths are relative)
    else:
        return None  # an external crate or std
    best = base if base in modules else None
    cur = base
    for s in segs:
        cur = cur + (s,)
        if cur in modules:
            best = cur
        else:
            break
    return best


def tarjan(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    by_file = "--files" in sys.argv
    modules = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".rs"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                if rel == "main.rs":
                    continue
                modules[module_of(rel)] = rel
    main_rs = os.path.join(ROOT, "main.rs")
    file_edges, top_edges = {}, {}
    sources = dict(modules)
    sources[("<bin>",)] = "main.rs"
    for mod, rel in sources.items():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
            text = strip_comments(fh.read())
        here = () if mod == ("<bin>",) else mod
        children = {m[-1] for m in modules if len(m) == len(here) + 1 and m[: len(here)] == here}
        for path, in_test in references(text, children):
            target = resolve(path, here, in_test, modules)
            if target is None or target == mod or (mod == ("<bin>",) and target == ()):
                continue
            file_edges.setdefault(rel, set()).add(modules[target])
            a = mod[0] if mod else "lib.rs"
            b = target[0] if target else "lib.rs"
            if a != b and a != "lib.rs" and b != "lib.rs":
                top_edges.setdefault(a, set()).add(b)
    del main_rs

    tops = sorted({m[0] for m in modules if m})
    if by_file:
        for rel in sorted(file_edges):
            print(f"{rel} -> {', '.join(sorted(file_edges[rel]))}")
    else:
        for t in tops:
            deps = sorted(top_edges.get(t, ()))
            print(f"{t:<10} -> {', '.join(deps) if deps else '(nothing of the crate)'}")
    file_cycles = tarjan(set(modules.values()) | {"main.rs"}, file_edges)
    top_cycles = tarjan(set(tops), top_edges)
    print()
    for c in top_cycles:
        print("cycle between top-level modules: " + " <-> ".join(c))
    for c in file_cycles:
        print("cycle between files: " + " <-> ".join(c))
    if not file_cycles and not top_cycles:
        print(f"no import cycle: {len(modules) + 1} files, {len(tops)} top-level modules")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
