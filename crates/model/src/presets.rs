//! Model presets shipped in `configs/presets/`, embedded at build time so the binary runs from
//! any directory.

use crate::config::{ConfigError, LlamaConfig};

const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../../configs/presets/tiny.json")),
    ("small", include_str!("../../../configs/presets/small.json")),
];

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// The preset's config, or `None` when no preset has that name.
pub fn preset(name: &str) -> Option<Result<LlamaConfig, ConfigError>> {
    PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, json)| LlamaConfig::from_json(json, &format!("configs/presets/{n}.json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_tiny_is_about_a_million_parameters() {
        for name in preset_names() {
            preset(name).unwrap().unwrap();
        }
        let tiny = preset("tiny").unwrap().unwrap().num_params();
        assert!((700_000..1_500_000).contains(&tiny), "tiny has {tiny} parameters");
    }
}
