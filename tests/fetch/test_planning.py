"""Pure logic of the engine: byte-range sets, chunk planning and pattern filtering."""

import pytest

from localmodel.fetch.patterns import parse_patterns, select
from localmodel.fetch.planning import Request, plan_requests, split_range
from localmodel.fetch.ranges import RangeSet


def test_ranges_merge_touching_and_overlapping() -> None:
    ranges = RangeSet()
    ranges.add(10, 20)
    ranges.add(30, 40)
    ranges.add(20, 30)  # touches both neighbours
    assert list(ranges) == [(10, 40)]
    ranges.add(0, 5)
    ranges.add(35, 50)
    ranges.add(3, 12)
    assert list(ranges) == [(0, 50)]
    assert ranges.prefix_end() == 50
    assert ranges.covered() == 50


def test_ranges_ignore_empty_and_report_gaps() -> None:
    ranges = RangeSet([(5, 5), (10, 20), (40, 60)])
    assert list(ranges) == [(10, 20), (40, 60)]
    assert ranges.prefix_end() == 0
    assert ranges.gaps(50) == [(0, 10), (20, 40)]
    assert ranges.gaps(70) == [(0, 10), (20, 40), (60, 70)]
    assert RangeSet().gaps(0) == []


def test_split_range_aligns_to_chunk_boundaries() -> None:
    assert split_range(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    # A resumed gap starting mid-chunk ends at the same boundaries a fresh run uses.
    assert split_range(5, 13, 4) == [(5, 8), (8, 12), (12, 13)]
    assert split_range(3, 3, 4) == []
    with pytest.raises(ValueError):
        split_range(0, 1, 0)


def test_plan_covers_exactly_the_missing_bytes_taking_turns_across_files() -> None:
    done = [RangeSet([(0, 6)]), RangeSet(), RangeSet([(2, 4)]), RangeSet()]
    requests = plan_requests([10, 0, 9, 3], done, chunk_size=4)
    assert requests == [
        Request(0, 6, 8), Request(2, 0, 2), Request(3, 0, 3),
        Request(0, 8, 10), Request(2, 4, 8),
        Request(2, 8, 9),
    ]
    assert sum(r.length for r in requests) == 4 + 7 + 3
    # each file's requests stay front to back
    for index in (0, 2):
        starts = [r.start for r in requests if r.file_index == index]
        assert starts == sorted(starts)


def test_plan_reads_unseekable_files_whole_even_when_partly_done() -> None:
    requests = plan_requests([10, 10], [RangeSet([(0, 4)]), RangeSet([(0, 10)])], chunk_size=4,
                             seekable=[False, False])
    assert requests == [Request(0, 0, 10)]


PATHS = ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx",
         "onnx/extra/a.txt", "README.md", ".gitattributes"]


@pytest.mark.parametrize("allow, ignore, expected", [
    ("", "", PATHS),
    ("*.json,*.safetensors", "", ["config.json", "model.safetensors"]),
    ("", "*.bin, *.md", ["config.json", "model.safetensors", "onnx/model.onnx",
                         "onnx/extra/a.txt", ".gitattributes"]),
    ("onnx/", "", ["onnx/model.onnx", "onnx/extra/a.txt"]),
    ("onnx/*", "onnx/extra/", ["onnx/model.onnx"]),
    ("*.JSON", "", []),  # case-sensitive, like the object stores
    ("*", ".*", [p for p in PATHS if p != ".gitattributes"]),
])
def test_patterns_follow_kserve_semantics(allow: str, ignore: str, expected: list[str]) -> None:
    assert select(PATHS, parse_patterns(allow), parse_patterns(ignore)) == expected


def test_parse_patterns_drops_blanks() -> None:
    assert parse_patterns(" a , ,b,") == ("a", "b")
    assert parse_patterns(None) == ()
