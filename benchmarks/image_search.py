"""Exact image search (`ImageIndex.top_k`: NumPy matmul + partition) vs faiss and hnswlib.

Does an approximate-nearest-neighbour library pay off for `clip-jax search`? Random unit
vectors [N, D] float32 stand in for image embeddings (exact search cost does not depend on the
values; HNSW recall is lower on random data than on real embeddings, so its recall here is a
floor). Prints, per method: build time, time for one query, per query in a batch of 64, and
recall@10 against the exact ranking. Alternating repeats, median and spread.

    python benchmarks/image_search.py [--n 1000000] [--dim 512] [--hnsw-n 100000]

faiss and hnswlib are not dependencies; install them to compare (pip install faiss-cpu
hnswlib). HNSW is built on `--hnsw-n` vectors (its build dominates) and its per-vector build
rate is extrapolated to N.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clip_jax.inference.image_index import ImageIndex


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.max(times) - np.min(times))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hnsw-n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    data = unit(rng, args.n, args.dim)
    queries = unit(rng, 64, args.dim)
    index = ImageIndex(data, [""] * args.n)
    _, exact = index.top_k(queries, 10)
    rows = [("numpy exact (clip_jax)", 0.0, lambda q: index.top_k(q, 10)[1], exact)]
    try:
        import faiss

        start = time.perf_counter()
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(data)
        rows.append(("faiss IndexFlatIP (exact)", time.perf_counter() - start,
                     lambda q: flat.search(q, 10)[1], exact))
    except ImportError:
        print("faiss not installed: skipped")
    try:
        import hnswlib

        sub = data[:args.hnsw_n]
        _, sub_exact = ImageIndex(sub, [""] * len(sub)).top_k(queries, 10)
        start = time.perf_counter()
        graph = hnswlib.Index(space="ip", dim=args.dim)
        graph.init_index(max_elements=len(sub), ef_construction=200, M=16)
        graph.add_items(sub)
        graph.set_ef(100)
        build = (time.perf_counter() - start) * args.n / len(sub)
        rows.append((f"hnswlib M=16 ef=100 (built on {len(sub)}, build x{args.n // len(sub)})",
                     build, lambda q: graph.knn_query(q, 10)[0], sub_exact))
    except ImportError:
        print("hnswlib not installed: skipped")

    results = {name: ([], []) for name, *_ in rows}
    for _ in range(args.repeats):  # alternate methods within each repeat
        for name, _, fn, _ in rows:
            results[name][0].append(timed(lambda: fn(queries[:1]), 1)[0])
            results[name][1].append(timed(lambda: fn(queries), 1)[0] / len(queries))
    print(f"N={args.n} D={args.dim} float32 ({data.nbytes / 2**30:.1f} GiB), k=10, "
          f"{args.repeats} alternating repeats: median (spread)")
    print(f"{'method':<58} {'build s':>9} {'1 query ms':>16} {'batched ms/q':>16} {'recall@10':>9}")
    for name, build, fn, reference in rows:
        one, batched = (np.asarray(x) * 1e3 for x in results[name])
        found = fn(queries)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, reference)])
        print(f"{name:<58} {build:>9.1f} {np.median(one):>9.1f} ({np.ptp(one):>4.1f}) "
              f"{np.median(batched):>9.2f} ({np.ptp(batched):>4.2f}) {recall:>9.3f}")


if __name__ == "__main__":
    main()
