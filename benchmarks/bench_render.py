"""Benchmark of ``anomalygen render``: throughput, the write floor, disk use and worker memory.

    python benchmarks/bench_render.py                      # 768 px, N=1024, 1 and 2 workers
    python benchmarks/bench_render.py --n 128 --size 256   # a quick run

Prints, for each worker count: samples/s of the render phase (phase 1, preparing the sources, is
reported apart), MB/s of raw pixels (image + mask), bytes per sample on disk, and the peak RSS
per worker. In the same run it measures the *floor*: writing the same number of already-made
samples (read back from the rendered store, untimed) with the same codec and sharding from one
process, through the same writer. Then the peak RSS per worker at two values of N (default 512
and 4096, two workers), which must not differ by more than 10%.

Targets (issue 3): one worker >= 60 samples/s at 768 px with zstd and within 1.5x of the floor;
two workers >= 1.8x one worker; RSS per worker within 10% between N=512 and N=4096.

The Dask rows (issue 6; skipped where distributed is not installed, or with --dask-pairs 0) run
the same render on a Dask ``LocalCluster`` of 2 single-threaded workers, alternating with the
2-process pool (``--dask-pairs`` pairs) so that both see the same load on a shared machine; the
ratio Dask / pool of render-phase samples/s has a target of >= 0.90 (within 10%).

``--layouts`` (issue 13) instead renders the same N samples in the full and the compact layout
(``--pairs`` alternating pairs, one worker, the same sources and codec), then reads both stores:
every sample composed from the compact store must equal the full store's byte for byte, and
sequential (a shard at a time) and random single-sample reads are timed for each, the compact
one also with a cache of one target photograph (every read misses, as with thousands of
sources), and one by one in store order, as a DataLoader reads them. It also times the
generator alone making the same samples from the same pools (the render without its writes):
no layout renders faster than that, so it bounds compact / full. Then the compact render's peak
RSS at the two ``--rss-n``. Targets: compact bytes per sample <= 1/20 of full, render samples/s
>= 4x, RSS flat in N.

Each case runs in a fresh Python process. Stores are written under --tmp (default /tmp) and
deleted afterwards; N=4096 at 768 px needs about 4 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "fundus-normal"


def _case_render(args: dict) -> dict:
    from anomalygen.render import render

    t0 = time.perf_counter()
    result = render(
        args["out"],
        args["src"],
        args["n"],
        size=args["size"],
        workers=args["workers"],
        shard_size=args["shard_size"],
        codec=args["codec"],
        overwrite=True,
        progress=False,
        cache_mb=args.get("cache_mb", 256),
        scheduler=args.get("scheduler"),
        layout=args.get("layout", "full"),
    )
    wall = time.perf_counter() - t0
    sample_bytes = result.sample_bytes  # every per-sample array, digests included
    return {
        "workers": result.workers,
        "n": result.n,
        "wall_s": wall,
        "render_s": result.render_seconds,
        "prepare_s": result.seconds - result.render_seconds,
        "samples_per_s": result.samples_per_second,
        "samples_per_cpu_s": result.samples_per_cpu_second,
        "bytes_on_disk": result.bytes_on_disk,
        "sample_bytes": sample_bytes,
        "peak_rss_per_worker": result.peak_rss_per_worker,
        "normals": result.normals,
    }


def _case_floor(args: dict) -> dict:
    """Write the rendered samples again, shard by shard, timing only the writes; then time
    random reads of single samples. ``codec`` / ``shard_size`` may differ from the source."""
    import numpy as np

    from anomalygen import store as st
    from anomalygen.render.threads import limit_zarr_threads
    from anomalygen.store.text import decode_texts, meta_bytes

    limit_zarr_threads(1)  # as in a render worker: one codec thread
    source = st.open_store(args["src_store"])
    codec = args.get("codec") or source.attrs["codec"]
    shard_size = args.get("shard_size") or source.shard_size
    n = len(source)
    loc = st.location(args["out"])
    shutil.rmtree(args["out"], ignore_errors=True)
    Path(args["out"]).mkdir(parents=True)
    attrs = {**source.attrs, "codec": codec, "shard_size": shard_size}
    width = meta_bytes(source.config.lesions[1])
    st.create_store(
        loc, attrs, n=n, size=source.size, shard_size=shard_size, codec=codec, pools={},
        meta_width=width,
    )  # fmt: skip
    writer = st.StoreWriter(loc)
    group = source.arrays()
    seconds = cpu = 0.0
    for s in range(-(-n // shard_size)):
        lo, hi = s * shard_size, min((s + 1) * shard_size, n)
        images = np.ascontiguousarray(group["image"][lo:hi])
        masks = np.ascontiguousarray(group["mask"][lo:hi])
        targets, sources = group["target"][lo:hi], group["source"][lo:hi]
        metas = [json.loads(t) for t in decode_texts(group["meta"][lo:hi])]
        t0, c0 = time.perf_counter(), time.process_time()
        writer.write_samples(s, lo, images, masks, targets, sources, metas)
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0
    reader = st.open_store(args["out"])
    sample_bytes = reader.sample_bytes()
    order = np.random.default_rng(0).permutation(n)[: min(n, 64)]
    t0 = time.perf_counter()
    for i in order:
        reader[int(i)]
    read_ms = (time.perf_counter() - t0) / len(order) * 1e3
    return {
        "n": n,
        "codec": codec,
        "shard_size": shard_size,
        "write_s": seconds,
        "samples_per_s": n / seconds,
        "samples_per_cpu_s": n / cpu,
        "sample_bytes": sample_bytes,
        "read_ms": read_ms,
    }


def _case_generate(args: dict) -> dict:
    """The render's phase 2 without its writes: the generator making every sample of the
    rendered store ``store`` again, shard by shard, from the same pools, as a one-worker render
    does (one OpenCV thread, its cache of pool images). No layout can render faster than this:
    it bounds compact / full at full render time / this time."""
    from anomalygen import open_store
    from anomalygen.render.cache import PoolCache
    from anomalygen.render.tasks import SampleSpec, ShardRenderer
    from anomalygen.render.threads import limit_opencv_threads, limit_zarr_threads

    limit_opencv_threads(1)
    limit_zarr_threads(1)
    store = open_store(args["store"])
    renderer = ShardRenderer(store.loc, SampleSpec.of(store.spec))
    cache = PoolCache(args.get("cache_mb", 256) << 20)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(store.n_shards):
        renderer.render(store.shard_range(s), cache)
    seconds = time.perf_counter() - t0
    return {"n": len(store), "samples_per_s": len(store) / seconds,
            "samples_per_cpu_s": len(store) / (time.process_time() - c0)}  # fmt: skip


def _case_compare(args: dict) -> dict:
    """Every sample of the compact store equals the full store's; read timings of both."""
    import numpy as np

    from anomalygen import open_store
    from anomalygen.render.threads import limit_zarr_threads

    limit_zarr_threads(1)  # as in a DataLoader worker
    full, compact = open_store(args["full"]), open_store(args["compact"])
    out: dict = {"identical": True}
    for label, store in (("full", full), ("compact", compact)):
        t0 = time.perf_counter()
        shards = [store.read_shard(s) for s in range(store.n_shards)]
        out[f"{label}_sequential_ms"] = (time.perf_counter() - t0) / len(store) * 1e3
        reader = open_store(store.url)  # one sample at a time, in order (a DataLoader's)
        t0 = time.perf_counter()
        for i in range(len(reader)):
            reader[i]
        out[f"{label}_one_by_one_ms"] = (time.perf_counter() - t0) / len(reader) * 1e3
        if label == "compact":
            for s, (images, masks) in enumerate(shards):
                ref = full.read_shard(s)
                same = np.array_equal(images, ref[0]) and np.array_equal(masks, ref[1])
                out["identical"] = out["identical"] and same
        del shards
    order = np.random.default_rng(0).permutation(len(full))[: min(len(full), 256)]
    for label, store, cache in (
        ("full", full, None), ("compact", compact, None), ("compact_miss", compact, 1),
    ):  # fmt: skip
        reader = open_store(store.url)
        if cache is not None:
            reader.cache_bytes = cache
        t0 = time.perf_counter()
        for i in order:
            reader[int(i)]
        out[f"{label}_random_ms"] = (time.perf_counter() - t0) / len(order) * 1e3
    return out


def _layouts(opts: argparse.Namespace, work: Path, shard: int) -> None:
    """Full against compact, alternating, in one run (issue 13's targets)."""
    rows: dict[str, list[dict]] = {"full": [], "compact": []}
    for pair in range(opts.pairs):
        for layout in ("full", "compact"):
            out = str(work / f"{layout}.zarr")
            r = _run_case("render", {
                "out": out, "src": opts.src, "n": opts.n, "size": opts.size, "workers": 1,
                "shard_size": shard, "codec": opts.codec, "cache_mb": opts.cache_mb,
                "layout": layout,
            })  # fmt: skip
            rows[layout].append(r)
            print(
                f"  pair {pair + 1}, {layout:7s}: {r['samples_per_s']:6.1f} samples/s"
                f" ({r['samples_per_cpu_s']:5.1f} per CPU-second)"
                f"  {r['sample_bytes'] / r['n'] / 1e3:8.1f} KB/sample"
                f"  peak RSS {_mb(r['peak_rss_per_worker'])} MB  (render {r['render_s']:.1f}s)",
                flush=True,
            )
    full, compact = (statistics.median(r["samples_per_s"] for r in rows[k]) for k in rows)
    cpu = [statistics.median(r["samples_per_cpu_s"] for r in rows[k]) for k in rows]
    size = [rows[k][-1]["sample_bytes"] / rows[k][-1]["n"] for k in rows]
    print(
        f"  compact / full: render samples/s {compact / full:.2f} (CPU {cpu[1] / cpu[0]:.2f};"
        f" target >= 4), bytes per sample 1/{size[0] / size[1]:.0f} (target <= 1/20)"
    )
    g = _run_case("generate", {"store": str(work / "full.zarr"), "cache_mb": opts.cache_mb})
    print(
        f"  the generator alone (no writes): {g['samples_per_s']:.1f} samples/s, so no layout"
        f" renders more than {g['samples_per_s'] / full:.2f}x full (compact reaches"
        f" {compact / full:.2f}x: {compact / g['samples_per_s']:.0%} of the generator's rate)"
    )
    c = _run_case(
        "compare", {"full": str(work / "full.zarr"), "compact": str(work / "compact.zarr")}
    )
    print(
        f"  composed == full for all {opts.n} samples: {c['identical']}; ms/sample read "
        f"by shard full {c['full_sequential_ms']:.2f}, compact {c['compact_sequential_ms']:.2f};"
        f" one by one in order full {c['full_one_by_one_ms']:.2f},"
        f" compact {c['compact_one_by_one_ms']:.2f};"
        f" random full {c['full_random_ms']:.2f}, compact {c['compact_random_ms']:.2f}"
        f" (every target read missing its cache: {c['compact_miss_random_ms']:.2f})"
    )
    for layout in rows:
        shutil.rmtree(work / f"{layout}.zarr", ignore_errors=True)
    rss = {}
    for n in [int(x) for x in opts.rss_n.split(",") if x]:
        out = str(work / f"rss_{n}.zarr")
        r = _run_case("render", {
            "out": out, "src": opts.src, "n": n, "size": opts.size, "workers": opts.rss_workers,
            "shard_size": shard, "codec": opts.codec, "layout": "compact",
        })  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
        rss[n] = r["peak_rss_per_worker"]
        print(f"  compact N={n:5d}, {opts.rss_workers} workers: peak RSS/worker {_mb(rss[n])} MB")
    if len(rss) == 2:
        lo, hi = sorted(rss)
        print(
            f"  compact peak RSS/worker N={hi} vs N={lo}: {rss[hi] / rss[lo]:.3f} (target <= 1.10)"
        )


def _run_case(kind: str, args: dict) -> dict:
    cmd = [sys.executable, __file__, "--case", kind, json.dumps(args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"case {kind} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def _sweep(opts: argparse.Namespace, work: Path, shard: int, raw: int) -> None:
    from anomalygen.store import CODECS

    out = str(work / "sweep_src.zarr")
    _run_case(
        "render",
        {
            "out": out,
            "src": opts.src,
            "n": opts.n,
            "size": opts.size,
            "workers": 1,
            "shard_size": shard,
            "codec": "none",
        },
    )
    print(
        "  codec       shard  write samples/s  per CPU-second  MB/s raw  KB/sample"
        "  random read ms/sample"
    )
    for codec in CODECS:
        for shard_size in (16, 32, 64, 128):
            r = _run_case(
                "floor",
                {
                    "src_store": out,
                    "out": str(work / "sweep.zarr"),
                    "codec": codec,
                    "shard_size": shard_size,
                },
            )
            print(
                f"  {codec:10s} {shard_size:6d}  {r['samples_per_s']:15.1f}"
                f"  {r['samples_per_cpu_s']:15.1f}"
                f"  {_mb(r['samples_per_s'] * raw):>8}  {r['sample_bytes'] / r['n'] / 1e3:9.1f}"
                f"  {r['read_ms']:21.2f}",
                flush=True,
            )


def _dask_rows(opts: argparse.Namespace, work: Path, shard: int, raw: int) -> None:
    """The cluster path's overhead on one machine: Dask LocalCluster vs the process pool."""
    if opts.dask_pairs <= 0:
        return
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("  Dask rows skipped: distributed is not installed (pip install 'anomalygen[dask]')")
        return
    ratios = []
    for pair in range(opts.dask_pairs):
        row = {}
        for label, scheduler in (("pool", None), ("dask", "local")):
            out = str(work / f"dask_{label}.zarr")
            row[label] = r = _run_case(
                "render",
                {
                    "out": out,
                    "src": opts.src,
                    "n": opts.n,
                    "size": opts.size,
                    "workers": 2,
                    "shard_size": shard,
                    "codec": opts.codec,
                    "cache_mb": opts.cache_mb,
                    "scheduler": scheduler,
                },
            )
            shutil.rmtree(out, ignore_errors=True)
            name = "2-process pool     " if label == "pool" else "Dask LocalCluster 2"
            print(
                f"  pair {pair + 1}, {name}: {r['samples_per_s']:6.1f} samples/s"
                f" ({r['samples_per_cpu_s']:5.1f} per CPU-second)"
                f"  {_mb(r['samples_per_s'] * raw):>6} MB/s raw"
                f"  (prepare + start-up {r['prepare_s']:.1f}s, render {r['render_s']:.1f}s,"
                f" wall {r['wall_s']:.1f}s)",
                flush=True,
            )
        ratios.append(row["dask"]["samples_per_s"] / row["pool"]["samples_per_s"])
    shown = ", ".join(f"{x:.2f}" for x in ratios)
    print(
        f"  Dask / pool, render samples/s: {shown}; median {statistics.median(ratios):.2f} "
        "(target >= 0.90)"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        kind, args = sys.argv[2], json.loads(sys.argv[3])
        cases = {
            "render": _case_render, "floor": _case_floor, "compare": _case_compare,
            "generate": _case_generate,
        }  # fmt: skip
        print(json.dumps(cases[kind](args)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=str(DEFAULT_SRC), help="source photographs")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--rss-n", default="512,4096", help="two N for the memory check ('' to skip)")
    p.add_argument("--rss-workers", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--codec", default="zstd")
    p.add_argument(
        "--cache-mb",
        type=int,
        default=256,
        help="worker cache of decoded normals; 1 makes every read miss, as with thousands of "
        "source photographs",
    )
    p.add_argument(
        "--dask-pairs",
        type=int,
        default=2,
        help="alternating (2-process pool, Dask LocalCluster of 2) render pairs; 0 skips",
    )
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument(
        "--layouts",
        action="store_true",
        help="instead: full against compact layout (issue 13), --pairs alternating renders",
    )
    p.add_argument("--pairs", type=int, default=2, help="with --layouts: render pairs")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="instead: render N samples once, then write them with every codec and shard size "
        "(16, 32, 64, 128) and time writes and random single-sample reads",
    )
    opts = p.parse_args()

    from anomalygen.store import DEFAULT_SHARD_SIZE

    shard = opts.shard_size or DEFAULT_SHARD_SIZE
    if not Path(opts.src).is_dir():
        sys.exit(f"--src: {opts.src} is not a folder (the real photographs are in ../shared/data)")
    raw = opts.size * opts.size * 4  # image (3 bytes) + mask (1 byte) per pixel
    work = Path(tempfile.mkdtemp(prefix="bench_render_", dir=opts.tmp))
    print(
        f"bench_render: {opts.size}x{opts.size}, N={opts.n}, codec {opts.codec}, shard size "
        f"{shard}, worker cache {opts.cache_mb} MB, sources {opts.src}; {os.cpu_count()} CPUs, "
        "load average "
        f"{os.getloadavg()[0]:.2f} at start"
    )
    try:
        if opts.sweep:
            _sweep(opts, work, shard, raw)
            return
        if opts.layouts:
            _layouts(opts, work, shard)
            return
        results = {}
        for w in [int(x) for x in opts.workers.split(",") if x]:
            out = str(work / f"render_w{w}.zarr")
            r = _run_case(
                "render",
                {
                    "out": out,
                    "src": opts.src,
                    "n": opts.n,
                    "size": opts.size,
                    "workers": w,
                    "shard_size": shard,
                    "codec": opts.codec,
                    "cache_mb": opts.cache_mb,
                },
            )
            results[w] = r
            print(
                f"  render, {w} worker{'s' if w > 1 else ' '}: {r['samples_per_s']:6.1f} samples/s"
                f" ({r['samples_per_cpu_s']:5.1f} per CPU-second)"
                f"  {_mb(r['samples_per_s'] * raw):>6} MB/s raw"
                f"  {r['sample_bytes'] / r['n'] / 1e3:7.1f} KB/sample on disk"
                f"  peak RSS/worker {_mb(r['peak_rss_per_worker'])} MB"
                f"  (prepare {r['prepare_s']:.1f}s, render {r['render_s']:.1f}s,"
                f" {r['normals']} normals)",
                flush=True,
            )
            if w != min(results):
                shutil.rmtree(out, ignore_errors=True)
        first = min(results)
        floor = _run_case(
            "floor",
            {"src_store": str(work / f"render_w{first}.zarr"), "out": str(work / "floor.zarr")},
        )
        print(
            f"  floor (write only, 1 process): {floor['samples_per_s']:6.1f} samples/s"
            f" ({floor['samples_per_cpu_s']:5.1f} per CPU-second)"
            f"  {_mb(floor['samples_per_s'] * raw):>6} MB/s raw",
            flush=True,
        )
        shutil.rmtree(work / f"render_w{first}.zarr", ignore_errors=True)
        shutil.rmtree(work / "floor.zarr", ignore_errors=True)

        if 1 in results:
            one = results[1]
            print(
                f"  1 worker: {one['samples_per_s']:.1f} samples/s, "
                f"{one['samples_per_cpu_s']:.1f} per CPU-second (target >= 60 at 768 px)"
            )
            print(
                "  render time / floor time: "
                f"wall {floor['samples_per_s'] / one['samples_per_s']:.2f}, "
                f"CPU {floor['samples_per_cpu_s'] / one['samples_per_cpu_s']:.2f} (target <= 1.5)"
            )
            if 2 in results:
                two = results[2]
                speedup = two["samples_per_s"] / one["samples_per_s"]
                cost = one["samples_per_cpu_s"] / two["samples_per_cpu_s"]
                print(
                    f"  2 workers / 1 worker: wall {speedup:.2f} (target >= 1.8); CPU cost per "
                    f"sample, 2 workers / 1 worker: {cost:.2f} (1.00 = no parallel overhead)"
                )

        _dask_rows(opts, work, shard, raw)

        rss_n = [int(x) for x in opts.rss_n.split(",") if x]
        if rss_n:
            rss = {}
            for n in rss_n:
                out = str(work / f"rss_{n}.zarr")
                r = _run_case(
                    "render",
                    {
                        "out": out,
                        "src": opts.src,
                        "n": n,
                        "size": opts.size,
                        "workers": opts.rss_workers,
                        "shard_size": shard,
                        "codec": opts.codec,
                    },
                )
                shutil.rmtree(out, ignore_errors=True)
                rss[n] = r["peak_rss_per_worker"]
                print(
                    f"  N={n:5d}, {opts.rss_workers} workers: peak RSS/worker {_mb(rss[n])} MB"
                    f"  ({r['samples_per_s']:.1f} samples/s, "
                    f"{r['samples_per_cpu_s']:.1f} per CPU-second)",
                    flush=True,
                )
            lo, hi = min(rss_n), max(rss_n)
            print(f"  peak RSS/worker N={hi} vs N={lo}: {rss[hi] / rss[lo]:.3f} (target <= 1.10)")
        print(f"load average at end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
