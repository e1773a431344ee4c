"""Which files a job takes: globs, depth, size limit, symlinks that stay inside the roots."""

from __future__ import annotations

from pathlib import Path

from semantik.indexing.scan import scan_directory
from tests.helpers import write


def scan(root: Path, **options: object) -> dict[str, tuple[str, str | None]]:
    defaults: dict[str, object] = {
        "recursive": True,
        "include": None,
        "exclude": None,
        "allowed_roots": [root],
        "max_file_size_bytes": 1024 * 1024,
    }
    found = scan_directory(root, **{**defaults, **options})  # type: ignore[arg-type]
    return {Path(f.path).relative_to(root).as_posix(): (f.status, f.error) for f in found}


def test_default_takes_supported_types_at_any_depth(docs: Path) -> None:
    for name in ("a.txt", "b/c.md", "b/d/e.pdf", "f.docx", "g.html", "clip.mp4", "b/archive.zip"):
        write(docs / name, "x")
    assert sorted(scan(docs)) == ["a.txt", "b/c.md", "b/d/e.pdf", "f.docx", "g.html"]
    assert sorted(scan(docs, recursive=False)) == ["a.txt", "f.docx", "g.html"]


def test_include_and_exclude_globs(docs: Path) -> None:
    for name in ("notes/a.md", "notes/drafts/b.md", "c.txt", "d.mp4"):
        write(docs / name, "x")
    assert sorted(scan(docs, include=["*.md"])) == ["notes/a.md", "notes/drafts/b.md"]
    assert sorted(scan(docs, include=["*.md"], exclude=["notes/drafts/*"])) == ["notes/a.md"]
    everything = scan(docs, include=["*"])
    assert everything["d.mp4"] == ("skipped", "unsupported file type '.mp4'")
    assert everything["c.txt"] == ("pending", None)


def test_oversized_files_are_skipped_with_reason(docs: Path) -> None:
    write(docs / "big.txt", "x" * 3 * 1024 * 1024)
    write(docs / "small.txt", "x")
    found = scan(docs, max_file_size_bytes=2 * 1024 * 1024)
    assert found["big.txt"] == ("skipped", "larger than the 2 MB limit")
    assert found["small.txt"] == ("pending", None)


def test_symlinks_stay_inside_the_roots(tmp_path: Path, docs: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.txt", "secret")
    write(docs / "real" / "inside.txt", "inside")
    (docs / "to-secret.txt").symlink_to(outside)
    (docs / "to-outside-dir").symlink_to(outside.parent)
    (docs / "to-inside.txt").symlink_to(docs / "real" / "inside.txt")
    (docs / "real" / "loop").symlink_to(docs)  # a cycle must not hang the scan
    (docs / "dangling.txt").symlink_to(docs / "nowhere.txt")
    found = scan(docs)
    assert found["to-secret.txt"] == ("skipped", "symlink leads outside the allowed roots")
    assert found["to-inside.txt"] == ("pending", None)
    assert found["real/inside.txt"] == ("pending", None)
    assert found["dangling.txt"] == ("skipped", "broken symlink")
    assert not any(name.startswith("to-outside-dir/") for name in found)
    assert not any("secret" in name and name != "to-secret.txt" for name in found)
