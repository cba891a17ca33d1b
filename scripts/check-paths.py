#!/usr/bin/env python3
"""Every repository path that the docs, scripts and deployment files name must exist, and README's
Layout must name every Rust file.

    scripts/check-paths.py     # lists each problem; exit 1 if any

Scripts read files by path (deploy/validate/check_manifests.py reads the metric registrations) and
the docs send readers to files; a move that forgets one of them breaks CI or misleads a reader.
Only paths under src/, tests/, scripts/, deploy/ and docs/ with a file extension are checked.

README.md's `## Layout` is the map a new maintainer reads first, so it must be complete and true:
each `*.rs` under src/, tests/ and benches/ is named there, and each file or folder named there
exists. Its `text` block is a tree: a line at indentation 2·d names an entry of the folder named on
the nearest line above at indentation 2·(d-1), as `name.rs`, `folder/`, `a/b.rs` or a list
`a.rs, b.rs`, followed by a description; a line indented exactly as far as the description above
continues it. Every other line is refused, so that a typo cannot hide a file.
"""
import os
import re
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Preceded by a non-path character, or by a shell variable naming the repository (`$REPO_ROOT/`, `}/`).
PATH = re.compile(r"(?:^|[^\w./-]|[A-Z_}]/)((?:src|tests|scripts|deploy|docs)/[\w./-]*\w\.(?:rs|py|sh|md|ya?ml|json|toml))")
SKIP_DIRS = {".git", "target", ".venv", ".cache", "node_modules"}
SUFFIXES = (".md", ".py", ".sh", ".yml", ".yaml", ".toml", ".rs")

# The folders whose every `*.rs` README's Layout names.
LAYOUT_ROOTS = ("src", "tests", "benches")
# One name in the Layout: a file (`x.rs`, `a/b.rs`) or a folder (`x/`, `a/b/`).
NAME = r"(?:[\w.-]+/)*[\w.-]+/?"
ENTRY = re.compile(rf"^({NAME}(?:, {NAME})*)(?:(\s+)\S.*)?$")


def referring_files():
    for top, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") or d == ".ci"]
        for name in files:
            if name.endswith(SUFFIXES) or top.endswith(".ci"):
                yield os.path.join(top, name)


def dangling_references():
    dangling = []
    for path in referring_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                for ref in PATH.findall(line):
                    if not os.path.exists(os.path.join(REPO, ref)):
                        dangling.append(f"{os.path.relpath(path, REPO)}:{lineno}: {ref}")
    return dangling


def layout_block(readme):
    """(first line number, lines) of the `text` block under README's `## Layout` heading."""
    lines = readme.splitlines()
    try:
        start = lines.index("## Layout")
    except ValueError:
        raise ValueError("README.md has no '## Layout' heading") from None
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("## "):
            break
        if lines[i].strip() == "```text":
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ValueError(f"README.md:{i + 1}: the Layout's text block is not closed")
            return i + 2, lines[i + 1:end]
    raise ValueError("README.md's Layout section has no ```text block")


def parse_layout(lines, first_lineno=1):
    """The paths a Layout tree names, as ([(line number, repository-relative path)], [problem]).

    Folders end with `/`. A problem names a line that is neither an entry one step below a folder
    above nor a continuation of a description.
    """
    named, problems = [], []
    folders = []  # (indentation, path) of the folders enclosing the current line
    description_at = None  # where the last entry's description starts
    for lineno, line in enumerate(lines, first_lineno):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == description_at:
            continue  # the description above, continued
        while folders and folders[-1][0] >= indent:
            folders.pop()
        depth = folders[-1][0] + 2 if folders else 0
        m = ENTRY.match(line.strip())
        names = m.group(1).split(", ") if m else []
        if indent != depth or not m or not all("." in n or n.endswith("/") for n in names):
            problems.append(f"README.md:{lineno} Layout: cannot read {line.strip()!r} (expected, at"
                            f" indentation {depth}, `name.rs`, `folder/` or `a.rs, b.rs` and a description,"
                            f" or a description continued at indentation {description_at})")
            continue
        parent = folders[-1][1] if folders else ""
        for n in names:
            named.append((lineno, parent + n))
        if len(names) == 1 and names[0].endswith("/"):
            folders.append((indent, parent + names[0]))
        description_at = indent + len(m.group(1)) + len(m.group(2)) if m.group(2) else None
    return named, problems


def layout_problems(readme, exists, rust_files):
    """Problems of README's Layout: lines it cannot read, named paths that `exists` denies, and
    `rust_files` (repository-relative) it does not name."""
    try:
        first, lines = layout_block(readme)
    except ValueError as e:
        return [str(e)]
    named, problems = parse_layout(lines, first)
    for lineno, path in named:
        if not exists(path):
            problems.append(f"README.md:{lineno} Layout: {path} is named but does not exist")
    names = {path for _, path in named}
    for path in sorted(rust_files):
        if path not in names:
            problems.append(f"README.md Layout: {path} is not named")
    return problems


def repository_rust_files():
    for root in LAYOUT_ROOTS:
        for top, dirs, files in os.walk(os.path.join(REPO, root)):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            for name in files:
                if name.endswith(".rs"):
                    yield os.path.relpath(os.path.join(top, name), REPO).replace(os.sep, "/")


def main():
    dangling = dangling_references()
    for d in dangling:
        print(d)
    print(f"check-paths: {len(dangling)} dangling path reference(s)" if dangling else "check-paths: every named path exists")
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    layout = layout_problems(readme, lambda p: os.path.exists(os.path.join(REPO, p)), repository_rust_files())
    for p in layout:
        print(p)
    roots = ", ".join(f"{r}/" for r in LAYOUT_ROOTS)
    print(f"check-paths: README Layout: {len(layout)} problem(s)" if layout
          else f"check-paths: README Layout names every *.rs under {roots}, and each of its entries exists")
    return 1 if dangling or layout else 0


if __name__ == "__main__":
    sys.exit(main())
