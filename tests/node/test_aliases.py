"""KServe <= 0.17's models/<modelName> layout: the pure plan and the links on a real filesystem."""

from __future__ import annotations

import os
from pathlib import Path

from localmodel.node.aliases import FolderLayout, plan_aliases, sync_aliases

KEY_A = "0123456789abcdef"
KEY_B = "fedcba9876543210"


def test_storage_key_layout_wants_no_links() -> None:
    assert plan_aliases(FolderLayout.STORAGE_KEY, [("llama", KEY_A)]).links == {}


def test_model_name_layout_links_each_name_and_refuses_unsafe_or_taken_names() -> None:
    plan = plan_aliases(FolderLayout.MODEL_NAME, [
        ("llama", KEY_A), ("llama", KEY_B), ("..", KEY_A), ("a/b", KEY_A), (KEY_B, KEY_A), ("x" * 256, KEY_A),
        ("mistral", KEY_B),
    ])
    assert plan.links == {"llama": KEY_A, "mistral": KEY_B}
    assert len(plan.refused) == 5
    assert any("already the folder of models/" + KEY_A in note for note in plan.refused)
    assert any("shaped like a storage key" in note for note in plan.refused)


def test_sync_links_only_present_folders_and_removes_only_its_own_links(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / KEY_A).mkdir(parents=True)
    os.symlink(KEY_B, models / "gone")           # ours, no longer wanted
    os.symlink("/etc", models / "foreign")       # not ours: never removed
    (models / "notes.txt").write_text("x")
    notes = sync_aliases(models, {"llama": KEY_A, "later": KEY_B})
    assert os.readlink(models / "llama") == KEY_A
    assert not os.path.lexists(models / "later"), "linked once its folder exists"
    assert not os.path.lexists(models / "gone")
    assert os.readlink(models / "foreign") == "/etc" and (models / "notes.txt").exists()
    assert sync_aliases(models, {"llama": KEY_A, "later": KEY_B}) == [], "idempotent"
    assert any("removed link models/gone" in n for n in notes)


def test_sync_moves_kserves_old_folder_unless_the_key_folder_exists(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "llama").mkdir(parents=True)
    (models / "llama" / "w.bin").write_bytes(b"w")
    (models / "mistral").mkdir()
    (models / KEY_B).mkdir()
    notes = sync_aliases(models, {"llama": KEY_A, "mistral": KEY_B})
    assert (models / KEY_A / "w.bin").read_bytes() == b"w" and os.readlink(models / "llama") == KEY_A
    assert (models / "mistral").is_dir() and not (models / "mistral").is_symlink()
    assert any("left alone" in n for n in notes)


def test_sync_leaves_a_symlink_it_did_not_make(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / KEY_A).mkdir(parents=True)
    os.symlink("../elsewhere", models / "llama")
    notes = sync_aliases(models, {"llama": KEY_A})
    assert os.readlink(models / "llama") == "../elsewhere"
    assert notes == ["models/llama is a symlink localmodel did not make; left alone"]
