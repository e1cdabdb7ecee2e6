#!/usr/bin/env python3
"""Builds the Hugging Face parity fixtures under tests/fixtures/hf/ with `transformers`.

Each fixture is a small random LlamaForCausalLM saved with save_pretrained (config.json +
model.safetensors) plus expected.json: per-token log-probabilities of a few id sequences,
computed by transformers in float32. evolve's test (crates/model/tests/hf_parity.rs) imports
the directory and must match them to 1e-4. CI only reads the committed files; regenerate with

    pip install torch transformers safetensors
    python3 scripts/hf_fixture.py            # writes tests/fixtures/hf/*

and check that transformers loads what `evolve model export` wrote with

    python3 scripts/hf_fixture.py --check-export DIR --expected tests/fixtures/hf/gqa/expected.json
"""
import argparse
import json
import pathlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEQUENCES = [
    [1, 5, 9, 42, 7, 99, 3],
    [2, 120, 64, 64, 64, 17],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
]

FIXTURES = {
    # Grouped-query attention, untied head, non-default rope_theta and eps, float32 weights.
    "gqa": dict(
        config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=False),
        dtype=torch.float32, seed=7),
    # Tied embeddings, multi-head attention, weights saved as bfloat16.
    "tied-bf16": dict(
        config=dict(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True),
        dtype=torch.bfloat16, seed=11),
}


def logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    return logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()


def build(name, spec):
    torch.manual_seed(spec["seed"])
    config = LlamaConfig(**spec["config"], attn_implementation="eager")
    model = LlamaForCausalLM(config)
    # Larger-than-default weights so the log-probs are far from uniform and differences show.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    out = ROOT / "tests" / "fixtures" / "hf" / name
    out.mkdir(parents=True, exist_ok=True)
    saved = model.to(spec["dtype"])
    saved.save_pretrained(out, safe_serialization=True)
    # Expected values come from exactly the saved (possibly rounded) weights, in float32.
    reference = saved.float().eval()
    vocab = config.vocab_size
    sequences = [[i % vocab for i in ids] for ids in SEQUENCES]
    expected = {"sequences": [{"ids": ids, "logprobs": logprobs(reference, ids)} for ids in sequences]}
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out}")


def check_export(directory, expected_path):
    model = LlamaForCausalLM.from_pretrained(directory, attn_implementation="eager").float().eval()
    expected = json.loads(pathlib.Path(expected_path).read_text())
    worst = 0.0
    for seq in expected["sequences"]:
        got = logprobs(model, seq["ids"])
        worst = max(worst, max(abs(a - b) for a, b in zip(got, seq["logprobs"])))
    print(f"transformers loaded {directory}; worst log-prob difference {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("export does not match")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-export")
    parser.add_argument("--expected")
    args = parser.parse_args()
    if args.check_export:
        check_export(args.check_export, args.expected)
    else:
        for name, spec in FIXTURES.items():
            build(name, spec)
