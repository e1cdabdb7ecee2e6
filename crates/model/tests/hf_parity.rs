//! Parity with Hugging Face `transformers`: fixtures made by `scripts/hf_fixture.py` (random
//! Llamas saved with `save_pretrained`, with the log-probabilities transformers computed) are
//! imported and must give the same per-token log-probabilities to 1e-4.

use std::path::PathBuf;

use evolve_model::{Checkpoint, cpu_device, export_hf_dir, import_hf_dir, token_logprobs};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf").join(name)
}

fn check(name: &str) -> Checkpoint {
    let device = cpu_device();
    let dir = fixture(name);
    let checkpoint = import_hf_dir(&dir, &device).unwrap();
    let model = checkpoint.to_model(&device, name).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut compared = 0;
    for seq in expected["sequences"].as_array().unwrap() {
        let ids: Vec<u32> = seq["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<f64> = seq["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = token_logprobs(&model, &ids, &device);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((*g as f64 - w).abs() < 1e-4, "{name}: position {i}: evolve {g}, transformers {w}");
            compared += 1;
        }
    }
    assert!(compared > 20);
    checkpoint
}

#[test]
fn grouped_query_attention_matches_transformers() {
    let c = check("gqa");
    assert_eq!(c.config.kv_heads(), 2);
    assert_eq!(c.config.rope_theta, 500000.0, "rope_theta is read from transformers 5's rope_parameters");
    assert!(!c.config.tie_word_embeddings);
}

#[test]
fn tied_bf16_checkpoint_matches_transformers() {
    let c = check("tied-bf16");
    assert!(c.config.tie_word_embeddings);
}

#[test]
fn export_then_import_is_the_same_checkpoint() {
    let device = cpu_device();
    let original = import_hf_dir(&fixture("gqa"), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    export_hf_dir(&original, out.path()).unwrap();
    let again = import_hf_dir(out.path(), &device).unwrap();
    assert_eq!(original.hash, again.hash);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["rope_theta"], 500000.0);
}

#[test]
fn unsupported_or_broken_checkpoints_are_clear_errors() {
    let device = cpu_device();
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gqa");
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();

    let scaled = config.replace("\"rope_type\": \"default\"", "\"rope_type\": \"yarn\"");
    std::fs::write(dir.path().join("config.json"), scaled).unwrap();
    let err = import_hf_dir(dir.path(), &device).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("rope_parameters") && err.contains("yarn"), "{err}");

    let wrong = config.replace("\"intermediate_size\": 96", "\"intermediate_size\": 97");
    std::fs::write(dir.path().join("config.json"), wrong).unwrap();
    let err = import_hf_dir(dir.path(), &device).unwrap_err().to_string();
    assert!(err.contains("gate_proj"), "{err}");

    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let err = import_hf_dir(dir.path(), &device).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("not a safetensors"), "{err}");

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = import_hf_dir(dir.path(), &device).unwrap_err().to_string();
    assert!(err.contains("neither model.safetensors"), "{err}");
}
