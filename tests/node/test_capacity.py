"""Capacity checks before a download: modelSize, the group's storageLimit, free space."""

import pytest

from localmodel.errors import (
    InsufficientSpaceError,
    ModelSizeExceededError,
    StorageLimitExceededError,
)
from localmodel.node.capacity import CapacityRequest, bytes_on_disk, check_capacity

GI = 2**30


def test_fits_everywhere() -> None:
    check_capacity(
        CapacityRequest(
            model_bytes=5 * GI, present_bytes=0, free_bytes=100 * GI, reserved_bytes=10 * GI,
            keep_free_bytes=GI, declared_bytes=6 * GI, group="workers",
            group_limit_bytes=50 * GI, group_used_bytes=40 * GI,
        )
    )


def test_model_larger_than_declared_size_is_refused() -> None:
    with pytest.raises(ModelSizeExceededError, match=r"model is 11Gi .* modelSize 10Gi"):
        check_capacity(CapacityRequest(model_bytes=11 * GI, present_bytes=0, free_bytes=100 * GI,
                                       declared_bytes=10 * GI))


def test_model_exactly_the_declared_size_fits() -> None:
    check_capacity(CapacityRequest(model_bytes=10 * GI, present_bytes=0, free_bytes=100 * GI,
                                   declared_bytes=10 * GI))


def test_group_storage_limit_counts_the_other_models_of_the_group() -> None:
    request = CapacityRequest(model_bytes=6 * GI, present_bytes=0, free_bytes=100 * GI,
                              group="gpu", group_limit_bytes=20 * GI, group_used_bytes=15 * GI)
    with pytest.raises(StorageLimitExceededError, match=r"'gpu' would hold 21Gi .* storageLimit 20Gi"):
        check_capacity(request)


def test_free_space_minus_other_downloads_and_reserve() -> None:
    request = CapacityRequest(model_bytes=10 * GI, present_bytes=0, free_bytes=20 * GI,
                              reserved_bytes=9 * GI, keep_free_bytes=2 * GI)
    with pytest.raises(InsufficientSpaceError, match=r"needs 10Gi more but only 9Gi is usable"):
        check_capacity(request)


def test_bytes_already_on_disk_are_not_needed_again() -> None:
    # Resuming 10 GiB of which 8 are already there needs only 2 more.
    check_capacity(CapacityRequest(model_bytes=10 * GI, present_bytes=8 * GI, free_bytes=3 * GI))


def test_every_refusal_is_an_insufficient_space_error_with_its_own_reason() -> None:
    assert StorageLimitExceededError("x").reason == "StorageLimitExceeded"
    assert ModelSizeExceededError("x").reason == "ModelSizeExceeded"
    assert InsufficientSpaceError("x").reason == "InsufficientSpace"
    assert issubclass(StorageLimitExceededError, InsufficientSpaceError)


def test_sizes_that_are_not_round_are_shown_rounded() -> None:
    with pytest.raises(InsufficientSpaceError, match=r"needs 1.50Gi more but only 1Mi is usable"):
        check_capacity(CapacityRequest(model_bytes=GI + GI // 2, present_bytes=0,
                                       free_bytes=2**20))


def test_a_new_revision_sharing_the_groups_shards_fits_its_limit() -> None:
    """9 GiB of the new 10 GiB revision are content store links the group's models already
    hold: the group grows by 1 GiB, not 10 (fetch/blobs.py)."""
    request = CapacityRequest(model_bytes=10 * GI, present_bytes=9 * GI, free_bytes=2 * GI,
                              group="gpu", group_limit_bytes=20 * GI, group_used_bytes=10 * GI,
                              group_shared_bytes=9 * GI)
    check_capacity(request)
    with pytest.raises(StorageLimitExceededError, match=r"9Gi of it shared"):
        check_capacity(CapacityRequest(model_bytes=10 * GI, present_bytes=9 * GI, free_bytes=2 * GI,
                                       group="gpu", group_limit_bytes=20 * GI, group_used_bytes=19 * GI + 1,
                                       group_shared_bytes=9 * GI))


def test_bytes_on_disk_count_each_shared_file_once() -> None:
    shard_a, shard_b, shard_c = (1, 10, 4 * GI), (1, 11, 4 * GI), (1, 12, 4 * GI)
    first = (9 * GI, 8 * GI, frozenset({shard_a, shard_b}))   # 1 GiB of its own
    second = (9 * GI, 8 * GI, frozenset({shard_a, shard_c}))  # shares shard_a with the first
    assert bytes_on_disk([first]) == 9 * GI
    assert bytes_on_disk([first, second]) == 2 * GI + 12 * GI
    # One file at two paths of one model (a tar hard link): its two paths, one inode.
    twice = (8 * GI, 8 * GI, frozenset({shard_a}))
    assert bytes_on_disk([twice]) == 4 * GI
    assert bytes_on_disk([]) == 0
