"""VoxCeleb1 ∩ VGGFace metadata: vox1_meta.csv, the identity split and the per-identity attributes.

The split follows Wen et al. (2019): identities present in both sets (exact VGGFace1 names), first letter
F–Z train, A–B validation, C–E test; labels index the sorted names of a split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datamodules.files import DataError, read_table, refuse_repeats
from datamodules.synthetic.traits import ATTRIBUTE_KINDS, read_attributes

log = logging.getLogger(__name__)

META_COLUMNS = ("VoxCeleb1 ID", "VGGFace1 ID")
SPLIT_LETTERS = {"train": "FGHIJKLMNOPQRSTUVWXYZ", "val": "AB", "test": "CDE"}


def read_meta(meta_csv) -> list[dict]:
    """Rows of vox1_meta.csv (tab- or comma-separated) with at least `VoxCeleb1 ID` and `VGGFace1 ID`. Quotes
    are read literally (the real file has none, and an unbalanced one would swallow rows); a file without rows,
    or with a VoxCeleb1 ID or a VGGFace1 name on two lines (a train/test leak, or a row that silently wins), is
    refused with the line numbers."""
    meta_csv = Path(meta_csv)
    if not meta_csv.is_file():
        raise DataError(f"{meta_csv}: meta file not found; copy VoxCeleb1's vox1_meta.csv there")
    head, numbered, columns = read_table(meta_csv, literal_quotes=True)
    numbered = [(line, {k.strip(): (v or "").strip() for k, v in r.items() if k}) for line, r in numbered]
    rows = [r for _, r in numbered]
    missing = [c for c in META_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"{meta_csv}: missing columns {missing} (found {head.strip()!r}); expected VoxCeleb1's "
            "tab-separated vox1_meta.csv"
        )
    if not rows:
        raise DataError(f"{meta_csv}: only a header, no identities; expected one line per VoxCeleb1 identity")
    for column in META_COLUMNS:
        refuse_repeats(meta_csv, numbered, column, "identity")
    return rows


def identity_split(meta_csv, face_names) -> dict[str, list[str]]:
    """Names in the meta file that have faces, split by first letter; each list sorted. Names whose first
    letter is in no split (a digit, a non-ASCII letter) are reported, since they would otherwise vanish."""
    names = {r["VGGFace1 ID"] for r in read_meta(meta_csv)} & set(face_names)
    split = {k: sorted(n for n in names if n[:1].upper() in letters) for k, letters in SPLIT_LETTERS.items()}
    unsplit = sorted(names - {n for ns in split.values() for n in ns})
    if unsplit:
        log.warning(
            "%s: %d identities fall into no split (their first letter is none of A-Z), left out: %s",
            meta_csv,
            len(unsplit),
            unsplit[:10],
        )
    return split


def read_attributes_if_any(root: Path) -> tuple[dict | None, dict]:
    """(attributes, kinds) from root/attributes.csv (the embedded corpus), else (None, {})."""
    if not (root / "attributes.csv").is_file():
        return None, {}
    return read_attributes(root / "attributes.csv"), dict(ATTRIBUTE_KINDS)


def speakers_from_meta(meta_csv) -> dict[str, dict]:
    """{name: {sex: "m"/"f"/"", nationality}} of every identity of vox1_meta.csv (Gender, Nationality)."""
    return {
        r["VGGFace1 ID"]: {"sex": r.get("Gender", "")[:1].lower(), "nationality": r.get("Nationality", "")}
        for r in read_meta(meta_csv)
    }
