//! The budget: `NxMODEL[:DURATION]` (e.g. `1xcpu`, `40xRTX4090:12h`), checked against the GPU
//! catalogue in `configs/gpus.toml`.

use std::time::Duration;

use burn::prelude::Device;
use serde::Deserialize;

const CATALOGUE: &str = include_str!("../../../configs/gpus.toml");

#[derive(Clone, Debug, Deserialize)]
pub struct GpuModel {
    pub name: String,
    pub memory_gb: f64,
    pub bf16_tflops: f64,
    pub usd_per_hour: f64,
}

#[derive(Deserialize)]
struct Catalogue {
    gpu: Vec<GpuModel>,
}

pub fn catalogue() -> Vec<GpuModel> {
    toml::from_str::<Catalogue>(CATALOGUE).expect("configs/gpus.toml is valid (checked by a test)").gpu
}

#[derive(Clone, Debug)]
pub struct Budget {
    pub count: u32,
    pub model: GpuModel,
    pub duration: Option<Duration>,
    pub spec: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budget `{spec}`: {why}; the form is NxMODEL[:DURATION], e.g. `1xcpu` or `40xRTX4090:12h`")]
    Malformed { spec: String, why: String },
    #[error("budget `{spec}`: unknown model `{model}`; known models (configs/gpus.toml): {known}")]
    UnknownModel { spec: String, model: String, known: String },
    #[error("budget `{spec}`: {why}")]
    Unusable { spec: String, why: String },
}

impl Budget {
    pub fn parse(spec: &str) -> Result<Budget, BudgetError> {
        let malformed = |why: &str| BudgetError::Malformed { spec: spec.to_string(), why: why.to_string() };
        let (head, duration) = match spec.split_once(':') {
            Some((head, d)) => (head, Some(parse_duration(d).ok_or_else(|| malformed(&format!("duration `{d}` is not a positive number followed by s, m, h or d")))?)),
            None => (spec, None),
        };
        let (count, model) = head.split_once(['x', 'X']).ok_or_else(|| malformed("missing the `x` between count and model"))?;
        let count: u32 = count.parse().map_err(|_| malformed(&format!("count `{count}` is not a whole number")))?;
        if count == 0 {
            return Err(malformed("count must be at least 1"));
        }
        let models = catalogue();
        let found = models.iter().find(|m| m.name.eq_ignore_ascii_case(model)).cloned().ok_or_else(|| BudgetError::UnknownModel {
            spec: spec.to_string(),
            model: model.to_string(),
            known: models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        Ok(Budget { count, model: found, duration, spec: spec.to_string() })
    }

    pub fn is_cpu(&self) -> bool {
        self.model.name == "cpu"
    }

    /// The device this process computes on, or why this build or machine cannot honour the
    /// budget.
    pub fn device(&self) -> Result<Device, BudgetError> {
        let unusable = |why: String| Err(BudgetError::Unusable { spec: self.spec.clone(), why });
        if self.is_cpu() {
            if self.count != 1 {
                return unusable(format!("{} CPU workers would share this machine's cores; use `1xcpu`", self.count));
            }
            return Ok(evolve_model::cpu_device());
        }
        if cfg!(feature = "cuda") {
            if self.count != 1 {
                return unusable(format!("{} GPUs need a worker pool, which this version does not run yet; use `1x{}`", self.count, self.model.name));
            }
            return Ok(cuda_device());
        }
        unusable(format!(
            "asks for {} {} GPU(s), but this evolve was built without CUDA support; rebuild with `--features cuda` or use `1xcpu`",
            self.count, self.model.name
        ))
    }

    /// Cost of `seconds` of one device, in USD, from the catalogue price.
    pub fn cost_usd(&self, seconds: f64) -> f64 {
        self.model.usd_per_hour * seconds / 3600.0
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Device {
    Device::cuda(0)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Device {
    unreachable!("guarded by cfg!(feature = \"cuda\")")
}

fn parse_duration(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let seconds = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => return None,
    };
    let value: f64 = text[..text.len() - 1].parse().ok().filter(|v: &f64| v.is_finite() && *v > 0.0)?;
    Some(Duration::from_secs_f64(value * seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_models_and_durations() {
        let b = Budget::parse("40xRTX4090:12h").unwrap();
        assert_eq!((b.count, b.model.name.as_str()), (40, "RTX4090"));
        assert_eq!(b.duration, Some(Duration::from_secs(12 * 3600)));
        assert!(Budget::parse("1xcpu").unwrap().is_cpu());
        assert_eq!(Budget::parse("2xA100-80GB:30m").unwrap().duration, Some(Duration::from_secs(1800)));
    }

    #[test]
    fn bad_budgets_say_what_is_valid() {
        let err = Budget::parse("4xGTX1080").unwrap_err().to_string();
        assert!(err.contains("GTX1080") && err.contains("RTX4090") && err.contains("cpu"), "{err}");
        for bad in ["", "cpu", "0xcpu", "-1xcpu", "1xcpu:5", "1xcpu:fast", "ax4090", "1xcpu:-3h"] {
            let err = Budget::parse(bad).unwrap_err().to_string();
            assert!(err.contains("NxMODEL"), "{bad}: {err}");
        }
    }

    #[test]
    fn gpus_without_cuda_and_cpu_pools_are_refused() {
        if !cfg!(feature = "cuda") {
            let err = Budget::parse("2xRTX4090").unwrap().device().unwrap_err().to_string();
            assert!(err.contains("without CUDA") && err.contains("1xcpu"), "{err}");
        }
        assert!(Budget::parse("2xcpu").unwrap().device().is_err());
        assert!(Budget::parse("1xcpu").unwrap().device().is_ok());
    }
}
