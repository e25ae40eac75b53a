"""Status body, merge patches with nulls for removed keys, progress throttling, pruning."""

from datetime import datetime, timedelta, timezone

from localmodel.api.types import ModelDetail, ModelStatus, NodeDisk
from localmodel.node.status import (
    PRUNE_RECHECK_PASSES,
    additive_fields_pruned,
    build_status,
    coarse_free_bytes,
    merge_patch,
    prune_recheck_due,
    status_patch,
    write_due,
)

NOW = datetime(2026, 11, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_body_has_kserve_enum_and_additive_detail() -> None:
    body = build_status(
        {"a": ModelStatus.DOWNLOADED, "ns/b": ModelStatus.DOWNLOADING},
        {"a": ModelDetail(storage_key="k1", bytes_total=10, bytes_done=10), "ns/b": ModelDetail(bytes_done=3)},
        disk=NodeDisk(capacity_bytes=100, used_bytes=13, free_bytes=50),
        observed_generation=4,
    )
    assert body == {
        "modelStatus": {"a": "ModelDownloaded", "ns/b": "ModelDownloading"},
        "modelDetails": {"a": {"storageKey": "k1", "bytesDone": 10, "bytesTotal": 10}, "ns/b": {"bytesDone": 3}},
        "disk": {"capacityBytes": 100, "usedBytes": 13, "freeBytes": 50},
        "modelsDownloaded": 1,
        "observedGeneration": 4,
    }


def test_empty_maps_are_kept_so_the_last_key_can_disappear() -> None:
    body = build_status({}, {}, disk=None, observed_generation=None)
    assert body == {"modelStatus": {}, "modelDetails": {}, "modelsDownloaded": 0}
    assert merge_patch({"modelStatus": {"a": "ModelDownloaded"}}, body) == {
        "modelStatus": {"a": None}, "modelDetails": {}, "modelsDownloaded": 0}


def test_merge_patch_nulls_removed_keys_and_nested_fields() -> None:
    old = {"modelStatus": {"a": "ModelDownloadError", "gone": "ModelDownloaded"},
           "modelDetails": {"a": {"reason": "NotFound", "bytesTotal": 5}}}
    new = {"modelStatus": {"a": "ModelDownloaded"}, "modelDetails": {"a": {"bytesTotal": 5}}}
    assert merge_patch(old, new) == {
        "modelStatus": {"a": "ModelDownloaded", "gone": None},
        "modelDetails": {"a": {"reason": None}},
    }


def test_merge_patch_of_equal_documents_is_empty() -> None:
    doc = {"modelStatus": {"a": "ModelDownloaded"}, "modelDetails": {"a": {"x": [1, 2]}}}
    assert merge_patch(doc, doc) == {}


def test_progress_only_change_is_not_significant() -> None:
    current = {"modelStatus": {"a": "ModelDownloading"},
               "modelDetails": {"a": {"bytesDone": 1, "bytesPerSecond": 5, "bytesTotal": 9}},
               "disk": {"freeBytes": 100}}
    desired = {"modelStatus": {"a": "ModelDownloading"},
               "modelDetails": {"a": {"bytesDone": 4, "bytesPerSecond": 6, "bytesTotal": 9}},
               "disk": {"freeBytes": 97}}
    patch, significant = status_patch(current, desired, additive_pruned=False)
    assert patch == {"modelDetails": {"a": {"bytesDone": 4, "bytesPerSecond": 6}}, "disk": {"freeBytes": 97}}
    assert not significant


def test_phase_change_is_significant() -> None:
    current = {"modelStatus": {"a": "ModelDownloading"}}
    desired = {"modelStatus": {"a": "ModelDownloaded"}}
    assert status_patch(current, desired, additive_pruned=False) == ({"modelStatus": {"a": "ModelDownloaded"}}, True)


def test_pruned_additive_fields_never_look_changed() -> None:
    # KServe's CRD dropped modelDetails: the server shows only modelStatus.
    current = {"modelStatus": {"a": "ModelDownloaded"}}
    desired = {"modelStatus": {"a": "ModelDownloaded"}, "modelDetails": {"a": {"bytesTotal": 5}}, "modelsDownloaded": 1}
    assert status_patch(current, desired, additive_pruned=True) == ({}, False)
    assert status_patch(current, desired, additive_pruned=False)[0] != {}


def test_pruning_is_detected_from_the_stored_status() -> None:
    sent = {"modelStatus": {"a": "ModelDownloaded"}, "modelDetails": {"a": {"bytesTotal": 5}}}
    assert additive_fields_pruned(sent, {"modelStatus": {"a": "ModelDownloaded"}})
    assert not additive_fields_pruned(sent, {"modelStatus": {}, "modelDetails": {"a": {"bytesTotal": 5}}})
    # Sending only KServe fields proves nothing either way.
    assert not additive_fields_pruned({"modelStatus": {"a": None}}, {})


def test_write_due_throttles_progress_but_not_phase_changes() -> None:
    assert write_due(significant=True, last_write=NOW, now=NOW, progress_interval=5) == (True, None)
    assert write_due(significant=False, last_write=None, now=NOW, progress_interval=5) == (True, None)
    assert write_due(significant=False, last_write=NOW, now=NOW + timedelta(seconds=2), progress_interval=5) == (
        False, NOW + timedelta(seconds=5))
    assert write_due(significant=False, last_write=NOW, now=NOW + timedelta(seconds=5), progress_interval=5) == (
        True, None)


def test_free_space_is_reported_coarsely_so_idle_nodes_write_nothing() -> None:
    mib, gib, tib = 2**20, 2**30, 2**40
    assert coarse_free_bytes(100 * gib + 5 * mib, 200 * gib) == 100 * gib  # 200 MiB steps
    assert coarse_free_bytes(100 * gib + 5 * mib, 200 * gib) == coarse_free_bytes(100 * gib + 90 * mib, 200 * gib)
    assert coarse_free_bytes(10 * mib, 50 * gib) == 0  # 64 MiB minimum step
    assert coarse_free_bytes(3 * tib + gib, 10 * tib) % (10 * gib) == 0


def test_a_pruning_crd_is_looked_at_again_after_some_resync_periods() -> None:
    seen = NOW
    period = PRUNE_RECHECK_PASSES * 60.0
    assert not prune_recheck_due(pruned_seen_at=None, now=seen + timedelta(days=1), resync_seconds=60)
    assert not prune_recheck_due(pruned_seen_at=seen, now=seen + timedelta(seconds=period - 1), resync_seconds=60)
    assert prune_recheck_due(pruned_seen_at=seen, now=seen + timedelta(seconds=period), resync_seconds=60)
    assert prune_recheck_due(pruned_seen_at=seen, now=seen + timedelta(seconds=PRUNE_RECHECK_PASSES), resync_seconds=1)
