"""Voice engine (MEDIUM): synthesizes speech-like audio buffers and keeps an audio cache.

Each "utterance" is 16-bit PCM at 16 kHz made of formant-like sine mixtures with an
envelope, one per word; rendered utterances are cached up to `--cache-mb`, and the trim
signal drops the cache.

    python -m components.voice_engine --cache-mb 60
"""

from __future__ import annotations

import argparse
import math
import random
from array import array

from ._common import Signals, logger, rss_mb

RATE = 16_000
PHRASES = ["hello", "memory", "warning", "all systems nominal", "loading model", "good morning", "goodbye"]


def synthesize(text: str, rng: random.Random) -> array:
    """About 0.25 s of audio per word: two formants whose pitch depends on the word."""
    samples = array("h")
    for word in text.split():
        f1 = 300 + (hash(word) % 500)
        f2 = 900 + (hash(word[::-1]) % 1500)
        n = int(RATE * 0.25)
        for i in range(n):
            env = math.sin(math.pi * i / n)
            value = env * (0.6 * math.sin(2 * math.pi * f1 * i / RATE) + 0.3 * math.sin(2 * math.pi * f2 * i / RATE))
            samples.append(int(12000 * value + rng.uniform(-200, 200)))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-mb", type=float, default=60.0)
    parser.add_argument("--utterances-per-s", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    log = logger("voice_engine")
    sig = Signals()
    rng = random.Random(args.seed)
    voices = {p: synthesize(p, rng) for p in PHRASES}  # the "model": a bank of base sounds
    log.info("ready", phrases=len(voices), rss_mb=round(rss_mb(), 1))

    cache: dict[int, array] = {}
    cache_bytes = 0
    counter = 0
    while not sig.stop.wait(1.0 / args.utterances_per_s):
        if sig.take_trim():
            freed = cache_bytes
            cache.clear()
            cache_bytes = 0
            log.info("trimmed", freed_mb=round(freed / 1048576, 1), rss_mb=round(rss_mb(), 1))
        if cache_bytes >= args.cache_mb * 1048576:
            continue
        # A new utterance: a few base sounds spliced together (cheap), cached by id.
        parts = [voices[rng.choice(PHRASES)] for _ in range(rng.randint(4, 12))]
        clip = array("h")
        for part in parts:
            clip.extend(part)
        counter += 1
        cache[counter] = clip
        cache_bytes += clip.itemsize * len(clip)
    log.info("stopping", cached_utterances=len(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
