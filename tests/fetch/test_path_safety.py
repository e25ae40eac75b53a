"""Which paths may be written below a destination: a table of hostile and harmless names."""

import pytest

from localmodel.errors import UnsafePathError
from localmodel.fetch.paths import TreeChecker, check_relative_path, check_tree

SAFE = [
    "config.json",
    "a/b/c.safetensors",
    "tokenizer/tokenizer.model",
    ".gitattributes",
    "weights..bin",
    "dir.with.dots/file",
    "ünïcödé/模型.bin",
    "a" * 255,
    "/".join(["d" * 200] * 5) + "/x",  # 1007 bytes: the longest kind of path still accepted
]

UNSAFE = [
    "",
    "/etc/passwd",
    "../x",
    "a/../../b",
    "a/..",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "..",
    ".",
    "a\\..\\b",
    "..\\x",
    "C:/Windows/x",
    "c:x",
    "a\x00b",
    "a\nb",
    "a\rb",
    "x\x7f",
    "a" * 256,
    "ok/" + "é" * 128,  # 256 bytes in UTF-8
    "/".join(["d" * 200] * 22) + "/x.bin",  # every part legal, 4.4 KB in all (ENAMETOOLONG)
]


@pytest.mark.parametrize("path", SAFE)
def test_safe_paths_pass_unchanged(path: str) -> None:
    assert check_relative_path(path) == path


@pytest.mark.parametrize("path", UNSAFE)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        check_relative_path(path)


def test_unsafe_message_does_not_crash_on_binary_names() -> None:
    with pytest.raises(UnsafePathError, match="control character"):
        check_relative_path("\x00" * 1000)


@pytest.mark.parametrize("paths", [
    ["a.bin", "A.bin"],
    ["model/x", "Model/y"],
    ["a", "a/b"],
    ["a/b", "a"],
    ["x/y/z", "x/Y"],
    ["same", "same"],
    ["caf\u00e9.bin", "cafe\u0301.bin"],  # composed vs decomposed é
])
def test_colliding_trees_are_refused(paths: list[str]) -> None:
    with pytest.raises(UnsafePathError):
        check_tree(paths)


def test_a_normal_tree_passes_in_order() -> None:
    paths = ["b/2", "a/1", "a/sub/3", "c"]
    assert check_tree(paths) == paths


def test_folder_entries_may_repeat_but_not_collide() -> None:
    checker = TreeChecker()
    checker.add_folder("a")
    checker.add_folder("a")
    checker.add_file("a/x")
    with pytest.raises(UnsafePathError):
        checker.add_folder("A")
    with pytest.raises(UnsafePathError):
        checker.add_folder("a/x")
