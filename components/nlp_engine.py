"""NLP engine (HIGH): builds an in-memory inverted index and term vectors over a corpus it
generates, then answers a steady trickle of queries with a result cache it can drop.

The corpus is synthetic but deterministic (seeded), so its memory is repeatable: about
`--docs` x 60 words. The cache grows as queries arrive up to `--cache-mb`; the trim signal
drops it.

    python -m components.nlp_engine --docs 20000 --cache-mb 40
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from array import array
from collections import Counter

from ._common import Signals, logger, rss_mb

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "ha", "ju"]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def build_index(
    docs: int, words_per_doc: int, vocab: list[str], rng: random.Random
) -> tuple[dict[str, array], list[dict[int, int]]]:
    # Zipf-like word frequencies, as in real text, so posting lists have realistic lengths.
    # Cumulative weights once: with `weights=`, choices() sums all 8,000 on every call, which
    # made the default 20,000 documents take 7-9 s to index; the drawn words are the same.
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))
    population = range(len(vocab))
    index: dict[str, array] = {}
    vectors: list[dict[int, int]] = []
    for doc_id in range(docs):
        terms = rng.choices(population, cum_weights=cum_weights, k=words_per_doc)
        counts = Counter(terms)
        vectors.append(dict(counts))
        for term in counts:
            index.setdefault(vocab[term], array("I")).append(doc_id)
    return index, vectors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--words-per-doc", type=int, default=60)
    parser.add_argument("--vocab", type=int, default=8_000)
    parser.add_argument("--cache-mb", type=float, default=40.0)
    parser.add_argument("--queries-per-s", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    log = logger("nlp_engine")
    sig = Signals()
    rng = random.Random(args.seed)
    started = time.monotonic()
    vocab = vocabulary(args.vocab, rng)
    index, vectors = build_index(args.docs, args.words_per_doc, vocab, rng)
    log.info(
        "ready",
        docs=args.docs,
        terms=len(index),
        build_s=round(time.monotonic() - started, 2),
        rss_mb=round(rss_mb(), 1),
    )

    cache: dict[tuple[str, str], list[int]] = {}
    cache_bytes = 0
    while not sig.stop.wait(1.0 / args.queries_per_s):
        if sig.take_trim():
            dropped = cache_bytes
            cache.clear()
            cache_bytes = 0
            log.info("trimmed", freed_mb=round(dropped / 1048576, 1), rss_mb=round(rss_mb(), 1))
        a, b = rng.choice(vocab), rng.choice(vocab)
        if (a, b) in cache or cache_bytes > args.cache_mb * 1048576:
            continue
        # An OR query ranked by term frequency: the result list is what the cache keeps.
        hits = set(index.get(a, ())) | set(index.get(b, ()))
        ranked = sorted(hits, key=lambda d: -(vectors[d].get(0, 0)))[:2000]
        cache[(a, b)] = ranked
        cache_bytes += 56 + 8 * len(ranked) + 32 * len(ranked)
    log.info("stopping", cached_queries=len(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
