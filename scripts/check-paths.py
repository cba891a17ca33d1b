#!/usr/bin/env python3
"""Every repository path that the docs, scripts and deployment files name must exist.

    scripts/check-paths.py     # lists each dangling reference as file:line: path; exit 1 if any

Scripts read files by path (deploy/validate/check_manifests.py reads the metric registrations) and
the docs send readers to files; a move that forgets one of them breaks CI or misleads a reader.
Only paths under src/, tests/, scripts/, deploy/ and docs/ with a file extension are checked.
"""
import os
import re
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Preceded by a non-path character, or by a shell variable naming the repository (`$REPO_ROOT/`, `}/`).
PATH = re.compile(r"(?:^|[^\w./-]|[A-Z_}]/)((?:src|tests|scripts|deploy|docs)/[\w./-]*\w\.(?:rs|py|sh|md|ya?ml|json|toml))")
SKIP_DIRS = {".git", "target", ".venv", ".cache", "node_modules"}
SUFFIXES = (".md", ".py", ".sh", ".yml", ".yaml", ".toml", ".rs")


def referring_files():
    for top, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") or d == ".ci"]
        for name in files:
            if name.endswith(SUFFIXES) or top.endswith(".ci"):
                yield os.path.join(top, name)


def main():
    dangling = []
    for path in referring_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                for ref in PATH.findall(line):
                    if not os.path.exists(os.path.join(REPO, ref)):
                        dangling.append(f"{os.path.relpath(path, REPO)}:{lineno}: {ref}")
    for d in dangling:
        print(d)
    print(f"check-paths: {len(dangling)} dangling path reference(s)" if dangling else "check-paths: every named path exists")
    return 1 if dangling else 0


if __name__ == "__main__":
    sys.exit(main())
