"""Training-batch read rate: local torch shards (the baseline) against litdata streams of the same data.

    python bench/streaming.py [--identities 48] [--batch 32] [--epochs 3] [--workers 0]

One datamodule per source over the embedded corpus, iterated for `--epochs` training epochs (random windows and
faces, the batch crop); rates are clips per second and a ratio to the shard reader measured in the same run.
Sources: the shards (torch.load(mmap=True)), the export in a folder (read in place), the export through
litdata's remote path (`local:`: chunks copied into a cache first, as from a bucket) and, when moto[server] is
installed, an S3 bucket served on localhost (first epoch downloads, later epochs read the cache). The one-off
export is timed too.
"""

import argparse
import logging
import socket
import tempfile
import time
from pathlib import Path

import torch

from datamodules.voxvgg import VoxVGGDataModule


def moto_s3():
    """(storage options, stop) for an S3 server on localhost, or None without moto."""
    try:
        import boto3
        import litdata.streaming.downloader as downloader
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    import os

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"  # moto serves http only
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    boto3.client("s3", **options).create_bucket(Bucket="bench")
    return options, server.stop


def clips_per_s(dm: VoxVGGDataModule, epochs: int) -> tuple[float, float]:
    """(first epoch, later epochs) clips/s of the training loader."""
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    rates = []
    for _ in range(epochs):
        t, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["label"])
        rates.append(n / (time.perf_counter() - t))
    return rates[0], sum(rates[1:]) / max(len(rates) - 1, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    base = dict(
        corpus={"identities": a.identities, "seed": 0},
        corpus_dir=str(tmp / "corpus"),
        cache_dir=str(tmp / "cache"),
        detector="file",
        batch_size=a.batch,
        num_workers=a.workers,
    )
    shards = VoxVGGDataModule(**base)
    shards.prepare_data()
    shards.setup()
    t = time.perf_counter()
    VoxVGGDataModule(**base, stream=str(tmp / "export")).prepare_data()
    export_s = time.perf_counter() - t
    sources = {
        "torch shards (baseline)": shards,
        "litdata, folder": VoxVGGDataModule(**base, stream=str(tmp / "export")),
        "litdata, local: (cached)": VoxVGGDataModule(
            **base, stream=f"local:{tmp / 'export'}", stream_cache_dir=str(tmp / "chunks_local")
        ),
    }
    s3 = moto_s3()
    if s3 is not None:
        options, stop = s3
        VoxVGGDataModule(**base, stream="s3://bench/v1", storage_options=options).prepare_data()
        sources["litdata, S3 (moto, localhost)"] = VoxVGGDataModule(
            **base, stream="s3://bench/v1", storage_options=options, stream_cache_dir=str(tmp / "chunks_s3")
        )
    clips = len(shards.source.sets["train"])
    print(
        f"{clips} training clips, batch {a.batch}, {a.workers} loader workers, "
        f"{torch.get_num_threads()} threads; export to a folder {export_s:.1f} s"
    )
    print(f"{'source':<32} {'epoch 1 clips/s':>16} {'later clips/s':>14} {'ratio (later)':>14}")
    baseline = None
    for name, dm in sources.items():
        first, later = clips_per_s(dm, a.epochs)
        baseline = baseline or later
        print(f"{name:<32} {first:>16.0f} {later:>14.0f} {later / baseline:>13.2f}x")
    if s3 is None:
        print("S3 row left out: pip install 'moto[server]' (the dev extra) to emulate a bucket")
    else:
        stop()


if __name__ == "__main__":
    main()
