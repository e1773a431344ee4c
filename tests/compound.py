"""Crafted Office 97-2003 files for the hostile-input tests: a minimal compound-file (OLE2) writer, and
a Word document and PowerPoint deck whose records say what a hostile file would say. olefile opens
the result; its own writer cannot add streams or change their size."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import olefile

_FREE, _END, _FAT_SECTOR = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
_SECTOR = 512


def compound_file(streams: list[tuple[str, bytes]]) -> bytes:
    """A version-3 compound file holding ``streams`` (a name with "/" is a stream in storages, made
    as needed), each padded to at least 4,096 bytes (so none lives in the mini stream); each
    storage's children a chain of right siblings."""
    streams = [(name, data.ljust(4096, b"\0") if data else data) for name, data in streams]
    fat: list[int] = []
    body = bytearray()
    # Directory entries: (name, kind (5 root, 1 storage, 2 stream), start sector, size).
    entries: list[tuple[str, int, int, int]] = [("Root Entry", 5, _END, 0)]
    children: dict[int, list[int]] = {0: []}
    storages: dict[str, int] = {"": 0}
    for path, data in streams:
        *folders, name = path.split("/")
        parent = 0
        for depth in range(len(folders)):
            key = "/".join(folders[: depth + 1])
            if key not in storages:
                storages[key] = len(entries)
                children[parent].append(len(entries))
                children[len(entries)] = []
                entries.append((folders[depth], 1, _END, 0))
            parent = storages[key]
        sectors = math.ceil(len(data) / _SECTOR)
        start = len(fat) if sectors else _END
        if sectors:
            fat += [*range(start + 1, start + sectors), _END]
            body += data.ljust(sectors * _SECTOR, b"\0")
        children[parent].append(len(entries))
        entries.append((name, 2, start, len(data)))
    directory_sectors = math.ceil(len(entries) / 4)
    directory_start = len(fat)
    fat += [*range(directory_start + 1, directory_start + directory_sectors), _END]
    right = {
        kid: (kids[i + 1] if i + 1 < len(kids) else _FREE) for kids in children.values() for i, kid in enumerate(kids)
    }
    directory = b""
    for index, (name, kind, start, size) in enumerate(entries):
        encoded = name.encode("utf-16-le") + b"\0\0"
        kids = children.get(index, [])
        child = kids[0] if kids else _FREE
        head = encoded.ljust(64, b"\0") + struct.pack(
            "<HBBIII", len(encoded), kind, 1, _FREE, right.get(index, _FREE), child
        )
        directory += head + b"\0" * 36 + struct.pack("<IQ", start, size)
    body += directory.ljust(directory_sectors * _SECTOR, b"\0")
    fat_sectors = 1
    while fat_sectors * 128 < len(fat) + fat_sectors:
        fat_sectors += 1
    assert fat_sectors <= 109
    fat_start = len(fat)
    fat += [_FAT_SECTOR] * fat_sectors
    fat += [_FREE] * (fat_sectors * 128 - len(fat))
    difat = [*range(fat_start, fat_start + fat_sectors)] + [_FREE] * (109 - fat_sectors)
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 16 + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
    header += b"\0" * 6 + struct.pack("<9I", 0, fat_sectors, directory_start, 0, 4096, _END, 0, _END, 0)
    header += struct.pack("<109I", *difat)
    return header + bytes(body) + struct.pack(f"<{len(fat)}I", *fat)


def _record(version: int, instance: int, kind: int, body: bytes) -> bytes:
    return struct.pack("<HHI", (instance << 4) | version, kind, len(body)) + body


def _deck(stream: bytes, edit: int) -> bytes:
    current_user = _record(0, 0, 0x0FF6, struct.pack("<III", 0x14, 0xE391C05F, edit) + b"\0" * 8)
    return compound_file([("Current User", current_user), ("PowerPoint Document", stream)])


def _user_edit(previous: int, directory: int, document: int = 1) -> bytes:
    return _record(0, 0, 0x0FF5, struct.pack("<IHBBIIIIHH", 0, 0, 0, 3, previous, directory, document, 100, 1, 0))


def deck_of_one_slide_shown_many_times(slides: int, text_bytes: int) -> bytes:
    """A deck whose slide list names one slide ``slides`` times; that slide holds ``text_bytes``
    characters."""
    places = b"".join(_record(0, 0, 0x03F3, struct.pack("<IIiII", 2, 0, 0, 256 + i, 0)) for i in range(slides))
    stream = bytearray(_record(0xF, 0, 0x03E8, _record(0xF, 0, 0x0FF0, places)))
    slide = len(stream)
    stream += _record(0xF, 0, 0x03EE, _record(0, 0, 0x0FA8, b"a" * text_bytes))
    directory = len(stream)
    stream += _record(0, 0, 0x1772, struct.pack("<III", 1 | (2 << 20), 0, slide))
    edit = len(stream)
    stream += _user_edit(0, directory)
    return _deck(bytes(stream), edit)


def word_document_with_text(
    corpus_doc: Path, text: bytes, pieces: list[tuple[int, int, int, bool]] | None = None
) -> bytes:
    """``corpus_doc`` with its text replaced by ``text`` (8-bit) in one piece, or in ``pieces``
    (first cp, end cp, stream offset, 8-bit) that may claim anything; no paragraph properties."""
    with olefile.OleFileIO(str(corpus_doc)) as ole:
        word = bytearray(ole.openstream("WordDocument").read())
        table = bytearray(ole.openstream("1Table").read())
    csw = struct.unpack_from("<H", word, 32)[0]
    longs = 34 + 2 * csw + 2
    pairs = longs + 4 * struct.unpack_from("<H", word, longs - 2)[0] + 2
    offset = len(word) + (-len(word)) % _SECTOR
    word += b"\0" * (offset - len(word)) + text
    pieces = pieces or [(0, len(text), offset, True)]
    cps = [piece[0] for piece in pieces] + [pieces[-1][1]]
    descriptors = b"".join(
        struct.pack("<HIH", 0, (fc * 2 | 0x40000000) if narrow else fc, 0) for _, _, fc, narrow in pieces
    )
    plc = struct.pack(f"<{len(cps)}I", *cps) + descriptors
    clx = b"\x02" + struct.pack("<I", len(plc)) + plc
    struct.pack_into("<II", word, pairs + 8 * 33, len(table), len(clx))
    table += clx
    struct.pack_into("<II", word, pairs + 8 * 13, 0, 0)  # no paragraph properties
    struct.pack_into("<8I", word, longs + 12, cps[-1], 0, 0, 0, 0, 0, 0, 0)
    return compound_file([("WordDocument", bytes(word)), ("1Table", bytes(table))])


def outlook_properties(header: int, values: dict[int, int]) -> bytes:
    """A .msg properties stream: ``header`` bytes (32 a message's, 8 an attachment's or a
    recipient's), then each 32-bit fixed property (a property id: its value) as [MS-OXMSG] 2.4 lays it
    out."""
    return b"\0" * header + b"".join(
        struct.pack("<IIQ", (prop << 16) | 0x0003, 0, value) for prop, value in values.items()
    )


def outlook_message(streams: dict[str, bytes], code_pages: dict[int, int]) -> bytes:
    """A saved Outlook message (.msg) with these property streams ("__substg1.0_0037001E": bytes,
    "__recip_version1.0_#00000000/...": in a storage) and the message's 32-bit fixed properties."""
    return compound_file([("__properties_version1.0", outlook_properties(32, code_pages)), *streams.items()])
