"""Write a llama-architecture GGUF model with random weights: a real model file that
llama.cpp loads and generates from (gibberish), for trying a model-server stack and for the
tests, where nothing can be downloaded. Needs the `gguf` package (`pip install -e .[models]`).

    python -m components.random_gguf models/random.gguf --blocks 4 --dims 256

The file is f32; its size grows with blocks x dims^2 (4 x 256: 17 MB, 8 x 512: 100 MB).
The vocabulary is the 256 byte tokens plus a few pieces, so any text tokenizes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PIECES = ["▁the", "▁a", "▁model", "▁memory", "▁is", "▁on", "▁of", "▁and", "▁to", "▁in", "er", "ing", "ed", "s", "▁"]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style: <unk>, <s>, </s>, the 256 byte tokens (typed BYTE), then pieces."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES
    kinds = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    kinds += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(PIECES)
    scores = [0.0] * 259 + [-float(i) for i in range(len(PIECES))]
    return tokens, scores, [int(k) for k in kinds]


def write(path: Path, blocks: int = 4, dims: int = 256, heads: int = 8, context: int = 2048, seed: int = 0) -> int:
    """Write the model; returns its size in bytes."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens, scores, kinds = vocabulary()
    ff = dims * 8 // 3 // 32 * 32 or 32

    def weights(*shape: int) -> Any:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"random-{blocks}x{dims}")
    writer.add_context_length(context)
    writer.add_embedding_length(dims)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(dims // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", weights(len(tokens), dims))
    for b in range(blocks):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(dims, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{b}.{name}.weight", weights(dims, dims))
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(dims, dtype=np.float32))
        writer.add_tensor(f"blk.{b}.ffn_gate.weight", weights(ff, dims))
        writer.add_tensor(f"blk.{b}.ffn_up.weight", weights(ff, dims))
        writer.add_tensor(f"blk.{b}.ffn_down.weight", weights(dims, ff))
    writer.add_tensor("output_norm.weight", np.ones(dims, dtype=np.float32))
    writer.add_tensor("output.weight", weights(len(tokens), dims))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = write(args.path, args.blocks, args.dims, args.heads, args.context, args.seed)
    print(f"wrote {args.path} ({size / 1048576:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
