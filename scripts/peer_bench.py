#!/usr/bin/env python3
"""The PyTorch side of `evolve bench train|generate`: the same Llama config (evolve's preset
config.json is a Hugging Face LlamaConfig), the same batch shape, the same thread count.
Prints one JSON line: {"tokens_per_second": ..., "seconds": ..., "tokens": ...}.

    python3 scripts/peer_bench.py train --config C.json --batch 32 --seq 64 --steps 20 --threads 2
    python3 scripts/peer_bench.py generate --config C.json --batch 64 --prompt 16 --new 32 --threads 2 --repeats 9
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "generate"])
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="timed generate runs; the fastest is reported")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = LlamaConfig(**json.load(open(a.config)), attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    vocab = config.vocab_size
    if a.mode == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        ids = torch.randint(0, vocab, (a.batch, a.seq))
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        for _ in range(3):
            step()
        start = time.perf_counter()
        for _ in range(a.steps):
            step()
        seconds = time.perf_counter() - start
        tokens = a.batch * a.seq * a.steps
    else:
        model.eval()
        ids = torch.randint(0, vocab, (a.batch, a.prompt))
        kwargs = dict(max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, use_cache=True,
                      pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            model.generate(ids, **kwargs)
            runs = []
            for _ in range(a.repeats):
                start = time.perf_counter()
                out = model.generate(ids, **kwargs)
                runs.append(time.perf_counter() - start)
        seconds = min(runs)
        tokens = (out.shape[1] - a.prompt) * a.batch
    print(json.dumps({"tokens_per_second": tokens / seconds, "seconds": seconds, "tokens": tokens}))


if __name__ == "__main__":
    main()
