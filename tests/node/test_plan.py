"""Pure planning of a reconcile pass: phases, actions, sharing, removal, retries, scrubs."""

from datetime import datetime, timedelta, timezone

import pytest

from localmodel.api.keys import storage_key
from localmodel.api.types import LocalModelInfo, ModelStatus
from localmodel.node.plan import (
    ABSENT,
    Action,
    DiskState,
    JobKind,
    JobView,
    Observed,
    Record,
    decide,
    plan,
    rfc3339,
    wanted_models,
)

NOW = datetime(2026, 11, 1, 12, 0, 0, tzinfo=timezone.utc)
URI_A = "s3://bucket/model-a"
URI_B = "hf://org/model-b"
KEY_A = storage_key(URI_A)
KEY_B = storage_key(URI_B)


def info(uri: str, name: str, namespace: str = "", **kw: object) -> LocalModelInfo:
    return LocalModelInfo.model_validate({"sourceModelUri": uri, "modelName": name, "namespace": namespace, **kw})


def present(uri: str = URI_A, **kw: object) -> Observed:
    return Observed(DiskState.PRESENT, uri=uri, bytes_total=100, files_total=2, revision="r1",
                    digest="sha256:d", completed_at=NOW - timedelta(hours=1), **kw)  # type: ignore[arg-type]


def one(uri: str = URI_A, name: str = "a"):  # type: ignore[no-untyped-def]
    wanted, _ = wanted_models([info(uri, name)])
    return next(iter(wanted.values()))


# --- grouping -------------------------------------------------------------------------------


def test_entries_sharing_a_storage_key_share_one_model() -> None:
    wanted, warnings = wanted_models([info(URI_A, "a"), info(URI_B, "b"), info(URI_A, "a", "team")])
    assert list(wanted) == [KEY_A, KEY_B]
    assert wanted[KEY_A].status_keys == ("a", "team/a")
    assert warnings == []


def test_a_status_key_listed_twice_keeps_its_first_entry() -> None:
    wanted, warnings = wanted_models([info(URI_A, "a"), info(URI_B, "a")])
    assert list(wanted) == [KEY_A]
    assert "listed twice" in warnings[0]


def test_trailing_slash_is_a_different_model_as_in_kserve() -> None:
    wanted, _ = wanted_models([info("s3://a", "x"), info("s3://a/", "y")])
    assert len(wanted) == 2


# --- one model --------------------------------------------------------------------------------


def test_absent_model_is_pending_and_downloaded() -> None:
    d = decide(one(), ABSENT, None, Record(), NOW)
    assert (d.phase, d.action) == (ModelStatus.DOWNLOAD_PENDING, Action.DOWNLOAD)


def test_queued_job_is_pending_running_job_is_downloading_with_progress() -> None:
    queued = JobView(JobKind.DOWNLOAD, running=False)
    assert decide(one(), ABSENT, queued, Record(), NOW).phase is ModelStatus.DOWNLOAD_PENDING
    running = JobView(JobKind.DOWNLOAD, running=True, started_at=NOW, bytes_done=40, bytes_total=100,
                      files_done=1, files_total=2, bytes_per_second=10)
    d = decide(one(), ABSENT, running, Record(), NOW)
    assert (d.phase, d.action) == (ModelStatus.DOWNLOADING, Action.NONE)
    assert d.detail.bytes_done == 40 and d.detail.bytes_total == 100 and d.detail.bytes_per_second == 10
    assert d.detail.start_time == rfc3339(NOW)


def test_verified_manifest_is_downloaded_with_revision_and_digest() -> None:
    d = decide(one(), present(), None, Record(started_at=NOW - timedelta(hours=2), bytes_per_second=7), NOW)
    assert (d.phase, d.action) == (ModelStatus.DOWNLOADED, Action.NONE)
    assert d.detail.revision == "r1" and d.detail.digest == "sha256:d"
    assert d.detail.bytes_done == d.detail.bytes_total == 100
    assert d.detail.completion_time == rfc3339(NOW - timedelta(hours=1))
    assert d.detail.reason is None


def test_a_folder_without_manifest_is_not_a_model() -> None:
    # KServe counts an existing (even empty) folder as downloaded; we do not.
    d = decide(one(), Observed(DiskState.ABSENT), None, Record(), NOW)
    assert d.action is Action.DOWNLOAD


def test_damaged_model_is_downloaded_again_and_says_why() -> None:
    damaged = Observed(DiskState.DAMAGED, uri=URI_A, bytes_total=100, problem="weights.bin: 90 bytes, expected 100")
    d = decide(one(), damaged, None, Record(), NOW)
    assert (d.phase, d.action) == (ModelStatus.DOWNLOAD_PENDING, Action.DOWNLOAD)
    assert d.detail.reason == "Damaged"
    assert "expected 100" in (d.detail.message or "")


def test_copy_of_another_uri_under_the_same_key_is_replaced() -> None:
    d = decide(one(), present(uri="s3://someone/else"), None, Record(), NOW)
    assert d.action is Action.DOWNLOAD


def test_symlink_in_the_models_place_is_reported_never_touched() -> None:
    conflict = Observed(DiskState.CONFLICT, problem="/mnt/models/models/x is a symlink")
    d = decide(one(), conflict, None, Record(), NOW)
    assert (d.phase, d.action) == (ModelStatus.DOWNLOAD_ERROR, Action.NONE)
    assert d.detail.reason == "PathConflict"


def test_failure_waits_for_its_backoff_then_retries() -> None:
    record = Record(failures=2, reason="NotFound", message="no such key", retry_at=NOW + timedelta(seconds=30))
    waiting = decide(one(), ABSENT, None, record, NOW)
    assert (waiting.phase, waiting.action) == (ModelStatus.DOWNLOAD_ERROR, Action.NONE)
    assert waiting.detail.reason == "NotFound" and waiting.detail.message == "no such key"
    assert waiting.detail.retry_at == rfc3339(NOW + timedelta(seconds=30))
    assert waiting.wake_at == NOW + timedelta(seconds=30)

    due = decide(one(), ABSENT, None, record, NOW + timedelta(seconds=30))
    assert due.action is Action.DOWNLOAD
    assert due.detail.reason == "NotFound"  # the last error stays visible while retrying


def test_present_model_wins_over_an_old_failure() -> None:
    record = Record(failures=1, reason="SourceUnavailable", retry_at=NOW + timedelta(minutes=5))
    d = decide(one(), present(), None, record, NOW)
    assert d.phase is ModelStatus.DOWNLOADED and d.detail.reason is None


# --- scrub ---------------------------------------------------------------------------------------


def test_scrub_runs_when_the_last_verification_is_older_than_the_interval() -> None:
    fresh = present(verified_at=NOW - timedelta(minutes=30))
    d = decide(one(), fresh, None, Record(), NOW, scrub_interval=3600)
    assert d.action is Action.NONE and d.wake_at == NOW + timedelta(minutes=30)

    stale = present(verified_at=NOW - timedelta(hours=2))
    d = decide(one(), stale, None, Record(), NOW, scrub_interval=3600)
    assert (d.phase, d.action) == (ModelStatus.DOWNLOADED, Action.SCRUB)


def test_scrub_uses_the_baseline_when_nothing_says_when_it_was_verified() -> None:
    unknown = Observed(DiskState.PRESENT, uri=URI_A, bytes_total=1)
    d = decide(one(), unknown, None, Record(), NOW, scrub_interval=60, scrub_baseline=NOW - timedelta(seconds=10))
    assert d.action is Action.NONE and d.wake_at == NOW + timedelta(seconds=50)


def test_scrub_off_by_default_and_running_scrub_keeps_model_downloaded() -> None:
    assert decide(one(), present(), None, Record(), NOW).wake_at is None
    scrubbing = JobView(JobKind.SCRUB, running=True)
    d = decide(one(), present(verified_at=NOW - timedelta(days=9)), scrubbing, Record(), NOW, scrub_interval=60)
    assert (d.phase, d.action) == (ModelStatus.DOWNLOADED, Action.NONE)


# --- whole pass -----------------------------------------------------------------------------------


def test_pass_with_shared_key_removal_and_unknown_data() -> None:
    wanted, _ = wanted_models([info(URI_A, "a"), info(URI_A, "a", "team"), info(URI_B, "b")])
    gone_key, running_gone_key = "0123456789abcdef", "fedcba9876543210"
    result = plan(
        wanted,
        on_disk=[KEY_A, gone_key, running_gone_key],
        observed={KEY_A: present()},
        jobs={running_gone_key: JobView(JobKind.DOWNLOAD, running=True)},
        records={},
        now=NOW,
    )
    assert result.model_status == {
        "a": ModelStatus.DOWNLOADED, "team/a": ModelStatus.DOWNLOADED, "b": ModelStatus.DOWNLOAD_PENDING}
    assert result.model_details["a"] == result.model_details["team/a"]
    assert result.downloads == (KEY_B,)
    assert result.cancels == (running_gone_key,)
    # A running job is cancelled first; its folder goes in a later pass, once it has stopped.
    assert result.deletions == (gone_key,)


def test_empty_spec_deletes_everything_on_disk_and_empties_status() -> None:
    result = plan({}, on_disk=[KEY_A], observed={KEY_A: present()}, jobs={}, records={}, now=NOW)
    assert result.model_status == {} and result.deletions == (KEY_A,)


def test_wake_at_is_the_earliest_retry_or_scrub() -> None:
    wanted, _ = wanted_models([info(URI_A, "a"), info(URI_B, "b")])
    result = plan(
        wanted,
        on_disk=[KEY_A],
        observed={KEY_A: present(verified_at=NOW - timedelta(seconds=50))},
        jobs={},
        records={KEY_B: Record(failures=1, reason="X", retry_at=NOW + timedelta(seconds=20))},
        now=NOW,
        scrub_interval=60,
    )
    assert result.wake_at == NOW + timedelta(seconds=10)


@pytest.mark.parametrize("phase", list(ModelStatus))
def test_status_values_are_kserve_enum_strings(phase: ModelStatus) -> None:
    assert phase.value in {"", "ModelDownloadPending", "ModelDownloading", "ModelDownloaded", "ModelDownloadError"}
