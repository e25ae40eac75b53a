"""The tool image variant (localmodel.dev.image.ToolImage): the product image's runtime settings
with another venv. Building one is covered by tests/realnodes/test_smoke_coldstart_benchmark.py (real nodes run
kserve-storage from it)."""

from __future__ import annotations

from localmodel.dev.image import IMAGE_CONFIG, KSERVE_STORAGE_IMAGE, ToolImage


def test_tool_image_runs_its_venv_as_the_product_image_runs_localmodel() -> None:
    tool = ToolImage("peer", ("peer==1.0",), "localhost/peer:1.0")
    config = tool.config()
    assert tool.venv_path == "/opt/peer"
    assert config.entrypoint == ("/opt/peer/bin/python",)
    assert config.user == IMAGE_CONFIG.user == "1000:1000"
    assert config.working_dir == IMAGE_CONFIG.working_dir
    path, *rest = config.env
    assert path == "PATH=/opt/peer/bin:" + IMAGE_CONFIG.env[0].split(":", 1)[1]
    assert "/opt/localmodel" not in path
    assert rest == list(IMAGE_CONFIG.env[1:])
    assert "peer==1.0" in config.labels["org.opencontainers.image.description"]


def test_kserve_storage_is_pinned_to_the_version_the_download_benchmark_measures() -> None:
    assert KSERVE_STORAGE_IMAGE.requirements == ("kserve-storage==0.21.0",)
    assert KSERVE_STORAGE_IMAGE.reference == "localhost/kserve-storage:0.21.0"
