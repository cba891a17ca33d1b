"""scripts/check-paths.py's reading of README's Layout tree: what it names, what it refuses, and what
it reports missing, on small trees under a made-up `app/` (the real README is checked by scripts/test.sh)."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_paths", ROOT / "scripts" / "check-paths.py")
check_paths = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_paths)

TREE = """\
app/
  lib.rs              the crate
  ci/                 the CI protocol
    mod.rs            ci_host
    client.rs         CiClient: submit, describe; a description that goes on
                      over a second line: mod.rs here is not a name
    raw.rs, relay.rs  two files on one line
    deep/
      leaf.rs         three levels
  secret.rs           back at the first level
schemas/              JSON Schemas, examples/ (not a name: in the description)
benches/pure.rs       a path with its folder
"""


def readme(tree):
    return f"# x\n\n## Layout\n\nText.\n\n```text\n{tree}```\n\n## Next\n\n```text\napp/other.rs\n```\n"


def test_the_tree_gives_each_name_its_folder_and_line():
    named, problems = check_paths.parse_layout(TREE.splitlines())
    assert problems == []
    assert named == [
        (1, "app/"), (2, "app/lib.rs"), (3, "app/ci/"), (4, "app/ci/mod.rs"), (5, "app/ci/client.rs"),
        (7, "app/ci/raw.rs"), (7, "app/ci/relay.rs"), (8, "app/ci/deep/"), (9, "app/ci/deep/leaf.rs"),
        (10, "app/secret.rs"), (11, "schemas/"), (12, "benches/pure.rs"),
    ]


def test_a_line_out_of_step_or_not_a_name_is_refused():
    named, problems = check_paths.parse_layout([
        "app/",
        "    lib.rs          two steps below app/",
        "  the crate         not a file or folder name",
        "  main.rs           read",
        "                   a continuation one column short of the description",
        "  stack/",
        "                    a continuation of an entry without a description",
    ])
    assert named == [(1, "app/"), (4, "app/main.rs"), (6, "app/stack/")]
    assert [p.split(" (expected")[0] for p in problems] == [
        "README.md:2 Layout: cannot read 'lib.rs          two steps below app/'",
        "README.md:3 Layout: cannot read 'the crate         not a file or folder name'",
        "README.md:5 Layout: cannot read 'a continuation one column short of the description'",
        "README.md:7 Layout: cannot read 'a continuation of an entry without a description'",
    ]


def test_missing_and_unknown_files_are_reported():
    present = {"app/", "app/lib.rs", "app/ci/", "app/ci/mod.rs", "app/ci/client.rs", "app/ci/raw.rs",
               "app/ci/deep/", "app/ci/deep/leaf.rs", "app/secret.rs", "schemas/", "benches/pure.rs",
               "app/ci/rate_limit.rs", "app/other.rs"}
    rust = sorted(p for p in present if p.endswith(".rs"))
    problems = check_paths.layout_problems(readme(TREE), present.__contains__, rust)
    assert problems == [
        "README.md:14 Layout: app/ci/relay.rs is named but does not exist",
        "README.md Layout: app/ci/rate_limit.rs is not named",
        # Named only in a later section's block: the Layout's block is the one that counts.
        "README.md Layout: app/other.rs is not named",
    ]


def test_a_complete_layout_has_no_problem():
    named, _ = check_paths.parse_layout(TREE.splitlines())
    present = {path for _, path in named}
    rust = [p for p in present if p.endswith(".rs")]
    assert check_paths.layout_problems(readme(TREE), present.__contains__, rust) == []


def test_a_readme_without_layout_is_a_problem():
    assert check_paths.layout_problems("# x\n", lambda p: True, []) == ["README.md has no '## Layout' heading"]
