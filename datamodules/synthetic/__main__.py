"""python -m datamodules.synthetic --out DIR [--identities N] [--seed S] [--contact-sheet PNG]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from datamodules.cli_errors import one_line_errors
from datamodules.synthetic import contact_sheet, generate_corpus


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.synthetic", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="corpus folder to create (must not exist)")
    parser.add_argument("--identities", type=int, default=120, help="identities with both voice and face")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes, one identity at a time each")
    parser.add_argument("--contact-sheet", type=Path, metavar="PNG", help="also write a PNG of every identity's faces")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = generate_corpus(args.out, identities=args.identities, seed=args.seed, workers=args.workers)
    files = [p for p in out.rglob("*") if p.is_file()]
    print(
        f"{out}: {len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if args.contact_sheet:
        print(f"contact sheet: {contact_sheet(out, args.contact_sheet)}")


if __name__ == "__main__":
    main()
