"""Chatbot (CRITICAL): answers chat messages over a local Unix socket with a small retrieval model.

Protocol: one JSON object per line, `{"message": "..."}` in, `{"reply": "...", "score": s}` out.
The model is TF-IDF over a built-in set of question/answer pairs: the reply is the answer
of the most similar question. The trim signal drops the reply cache.

    python -m components.chatbot [--socket PATH]   (default $IRONCLIW_RUNTIME_DIR/chatbot.sock)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socketserver
import threading
from collections import Counter, OrderedDict

from ._common import Signals, logger, rss_mb

KNOWLEDGE = [
    ("hello hi hey good morning", "Hello! I am Ironcliw. How can I help?"),
    ("how are you doing today", "All systems nominal, thank you."),
    ("what is your name who are you", "I am Ironcliw, your local assistant."),
    ("what time is it clock", "I cannot see a clock from here, but your menu bar can."),
    ("what can you do help abilities", "I can chat, look things up in my notes and read text aloud."),
    ("memory usage ram how much memory", "Ask the supervisor: `ironcliw status` shows each component's memory."),
    ("tell me a joke funny", "I would tell you a UDP joke, but you might not get it."),
    ("weather forecast rain sun", "I have no network here, so no weather, sorry."),
    ("thank you thanks", "You are welcome."),
    ("bye goodbye see you", "Goodbye!"),
    ("play music song", "The voice engine handles audio; ask it to speak instead."),
    ("search documents find notes", "The NLP engine indexes your notes; try a keyword."),
    ("restart reboot system", "Use `ironcliw restart NAME` to restart one component."),
    ("why is the laptop slow", "Memory pressure, probably: `ironcliw status` will tell."),
    ("who made you creator", "The Ironcliw team."),
]
TOKEN = re.compile(r"[a-z0-9]+")


class RetrievalModel:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        docs = [Counter(TOKEN.findall(q.lower())) for q, _ in pairs]
        df = Counter(term for doc in docs for term in doc)
        self.idf = {t: math.log((1 + len(docs)) / (1 + n)) + 1 for t, n in df.items()}
        self.vectors = [self._vector(doc) for doc in docs]
        self.answers = [a for _, a in pairs]
        self.cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.lock = threading.Lock()

    def _vector(self, counts: Counter[str]) -> dict[str, float]:
        vec = {t: c * self.idf.get(t, 0.0) for t, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {t: v / norm for t, v in vec.items()}

    def reply(self, message: str) -> tuple[str, float]:
        key = message.strip().lower()
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        query = self._vector(Counter(TOKEN.findall(key)))
        scores = [sum(w * vec.get(t, 0.0) for t, w in query.items()) for vec in self.vectors]
        best = max(range(len(scores)), key=scores.__getitem__)
        answer = (
            (self.answers[best], round(scores[best], 3)) if scores[best] > 0.1 else ("I did not understand that.", 0.0)
        )
        with self.lock:
            self.cache[key] = answer
            while len(self.cache) > 10_000:
                self.cache.popitem(last=False)
        return answer

    def trim(self) -> int:
        with self.lock:
            n = len(self.cache)
            self.cache.clear()
        return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    runtime = os.environ.get("IRONCLIW_RUNTIME_DIR", ".")
    parser.add_argument("--socket", default=os.path.join(runtime, "chatbot.sock"))
    args = parser.parse_args()
    log = logger("chatbot")
    sig = Signals()
    model = RetrievalModel(KNOWLEDGE)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                try:
                    message = json.loads(raw)["message"]
                    text, score = model.reply(str(message))
                    out = {"reply": text, "score": score}
                except (ValueError, KeyError, TypeError) as exc:
                    out = {"error": f'expected {{"message": ...}}: {exc}'}
                self.wfile.write(json.dumps(out).encode() + b"\n")

    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = socketserver.ThreadingUnixStreamServer(args.socket, Handler)
    server.daemon_threads = True
    os.chmod(args.socket, 0o600)
    threading.Thread(target=server.serve_forever, name="chat-server", daemon=True).start()
    log.info("ready", socket=args.socket, answers=len(model.answers), rss_mb=round(rss_mb(), 1))
    while not sig.stop.wait(0.2):
        if sig.take_trim():
            log.info("trimmed", dropped_replies=model.trim(), rss_mb=round(rss_mb(), 1))
    server.shutdown()
    server.server_close()
    os.unlink(args.socket)
    log.info("stopping")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
