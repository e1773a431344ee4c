"""Settings come from SEMANTIK_* variables, and every one of them is documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from semantik.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"SEMANTIK_{name.upper()}" not in readme]
    assert missing == []


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEMANTIK_ALLOWED_ROOTS", f"{tmp_path}/a,{tmp_path}/b")
    monkeypatch.setenv("SEMANTIK_PORT", "9001")
    monkeypatch.setenv("SEMANTIK_EMBED_DTYPE", "fp32")
    monkeypatch.setenv("SEMANTIK_DATA_DIR", str(tmp_path / "d"))
    settings = Settings()
    assert settings.allowed_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.port == 9001
    assert settings.embed_dtype == "fp32"
    assert settings.db_path == tmp_path / "d" / "semantik.db"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMANTIK_EMBED_DTYPE", "int3")
    with pytest.raises(ValueError, match="embed_dtype"):
        Settings()
