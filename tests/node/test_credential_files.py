"""File-type credentials (GCS keys) exist only privately and only while a download runs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from localmodel.fetch.options import FetchOptions
from localmodel.node.credentials import Credentials
from localmodel.node.downloads import DownloadRequest, Jobs
from localmodel.node.store import ModelStore
from tests.node.agent_process import wait_until
from tests.node.models import make_model


def test_key_file_is_private_and_removed_after_the_download(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    jobs = Jobs(ModelStore(tmp_path / "root"), max_concurrent=1, options=FetchOptions(), temp_dir=temp)
    try:
        settings, folder = jobs._materialize(
            Credentials(settings={"A": "b"}, files={"GOOGLE_APPLICATION_CREDENTIALS": '{"k": "v"}'}))
        assert folder is not None
        path = Path(settings["GOOGLE_APPLICATION_CREDENTIALS"])
        assert path.read_text() == '{"k": "v"}' and settings["A"] == "b"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert Path(folder).parent == temp

        source = tmp_path / "model"
        make_model(source, {"w.bin": 1000})
        request = DownloadRequest(key="0123456789abcdef", uri=source.as_uri(),
                                  credentials=Credentials(files={"GOOGLE_APPLICATION_CREDENTIALS": "{}"}))
        assert jobs.submit_download(request, frozenset())
        results = wait_until(jobs.take_results, "the download to finish")
        assert [r.ok for r in results] == [True]
        # Only the folder made by the direct call above is left; the job's own one is gone.
        assert os.listdir(temp) == [Path(folder).name]
    finally:
        jobs.shutdown(timeout=10)
