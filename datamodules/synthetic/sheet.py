"""Contact sheet: a PNG with a few faces of every identity and the traits behind them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from datamodules.synthetic.traits import read_attributes

_FACES, _TILE, _COLUMNS = 4, 96, 3  # faces per identity, their size, identities per row


def contact_sheet(corpus_dir: str | Path, out_png: str | Path) -> Path:
    corpus_dir, out_png = Path(corpus_dir), Path(out_png)
    attributes = read_attributes(corpus_dir / "attributes.csv")
    names = sorted(p.name for p in (corpus_dir / "vggface").iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"{corpus_dir / 'vggface'}: no identity folders")
    font = ImageFont.load_default(size=11)
    block_w, block_h = _FACES * _TILE + 12, _TILE + 44
    rows = -(-len(names) // _COLUMNS)
    sheet = Image.new("RGB", (_COLUMNS * block_w, rows * block_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(names):
        x0, y0 = (i % _COLUMNS) * block_w + 6, (i // _COLUMNS) * block_h + 4
        for k, jpg in enumerate(sorted((corpus_dir / "vggface" / name).glob("*.jpg"))[:_FACES]):
            with Image.open(jpg) as face:
                sheet.paste(face.convert("RGB").resize((_TILE, _TILE), Image.LANCZOS), (x0 + k * _TILE, y0))
        a = attributes[name]
        lines = (
            f"{name}  {a['sex']}  {a['nationality']} ({a['language']}+{a['voice_variant']})",
            f"pitch {a['pitch']:.0f}  rate {a['rate_wpm']:.0f} wpm  skin {a['skin_tone']:.2f}  "
            f"hair {a['hair_colour']} {a['hair_length']:.2f}",
            f"jaw {a['jaw_width']:.2f}  brow {a['brow_thickness']:.2f}  eye {a['eye_size']:.2f} "
            f"{a['eye_colour']}  mouth {a['mouth_width']:.2f}",
        )
        for j, line in enumerate(lines):
            draw.text((x0, y0 + _TILE + 2 + 12 * j), line, fill=(0, 0, 0), font=font)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
