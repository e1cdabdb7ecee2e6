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
    #[error("--device `{device}`: {why}")]
    Device { device: String, why: String },
}

/// Where a process computes, as `--device` names it: `cpu`, `cuda:N`, or `wgpu` / `wgpu:N`
/// (the portable GPU backend: Vulkan, Metal or DirectX through wgpu; `wgpu` is the adapter wgpu
/// ranks best, `wgpu:N` the N-th discrete GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
    Wgpu(Option<usize>),
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Wgpu(None) => write!(f, "wgpu"),
            DeviceChoice::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
        }
    }
}

impl DeviceChoice {
    pub fn parse(text: &str) -> Result<DeviceChoice, BudgetError> {
        let bad = |why: &str| BudgetError::Device { device: text.to_string(), why: why.to_string() };
        const VALID: &str = "valid: cpu, cuda:N, wgpu, wgpu:N (N = the GPU's index, from 0)";
        match text {
            "cpu" => Ok(DeviceChoice::Cpu),
            "wgpu" => Ok(DeviceChoice::Wgpu(None)),
            _ => {
                if let Some(Ok(n)) = text.strip_prefix("cuda:").map(str::parse::<usize>) {
                    Ok(DeviceChoice::Cuda(n))
                } else if let Some(Ok(n)) = text.strip_prefix("wgpu:").map(str::parse::<usize>) {
                    Ok(DeviceChoice::Wgpu(Some(n)))
                } else {
                    Err(bad(VALID))
                }
            }
        }
    }

    fn is_gpu(self) -> bool {
        !matches!(self, DeviceChoice::Cpu)
    }

    /// The device, after checking that this build and this machine have it: burn panics deep
    /// inside its runtime when the CUDA driver is missing, so the driver and the device count are
    /// asked first; a wgpu device is acquired through burn's fallible initialisation, so a
    /// machine without a GPU adapter is an error too.
    pub fn device(self) -> Result<Device, BudgetError> {
        match self {
            DeviceChoice::Cpu => Ok(evolve_model::cpu_device()),
            DeviceChoice::Cuda(index) => cuda_device(index),
            DeviceChoice::Wgpu(index) => wgpu_device(index),
        }
    }
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
        // With more than one device the work runs in a worker pool, one worker per device;
        // this is the controller's own device (the first).
        if self.is_cpu() {
            return Ok(evolve_model::cpu_device());
        }
        if cfg!(any(feature = "cuda", feature = "wgpu")) {
            // CUDA when built with it, else the portable wgpu backend.
            let device = if cfg!(feature = "cuda") { cuda_device(0) } else { wgpu_device(None) };
            return device.map_err(|e| BudgetError::Unusable { spec: self.spec.clone(), why: e.to_string() });
        }
        unusable(format!(
            "asks for {} {} GPU(s), but this evolve was built without GPU support (neither CUDA nor wgpu); rebuild with `--features cuda` or `--features wgpu`, or use `1xcpu`",
            self.count, self.model.name
        ))
    }

    /// The device for this process: the budget's own, or `choice` (which GPU of a GPU budget, or
    /// `cpu` for a CPU budget; mixing the two is refused, since the budget prices the device).
    pub fn device_with(&self, choice: Option<DeviceChoice>) -> Result<Device, BudgetError> {
        match choice {
            None => self.device(),
            Some(DeviceChoice::Cpu) if self.is_cpu() => self.device(),
            Some(c) if c.is_gpu() && !self.is_cpu() && self.count != 1 => self.device(),
            Some(c) if c.is_gpu() && !self.is_cpu() => c.device(),
            Some(c) => Err(BudgetError::Unusable {
                spec: self.spec.clone(),
                why: format!("--device {c} does not match the budget's device kind; use `--device {}`", if self.is_cpu() { "cpu" } else { "cuda:N`, `wgpu` or `wgpu:N" }),
            }),
        }
    }

    /// Cost of `seconds` of one device, in USD, from the catalogue price.
    pub fn cost_usd(&self, seconds: f64) -> f64 {
        self.model.usd_per_hour * seconds / 3600.0
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device, BudgetError> {
    let device = format!("cuda:{index}");
    let count = cuda_driver::device_count().map_err(|why| BudgetError::Device { device: device.clone(), why })?;
    if index >= count {
        return Err(BudgetError::Device { device, why: format!("this machine has {count} CUDA device(s); valid: cuda:0 to cuda:{}", count.saturating_sub(1)) });
    }
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(index: usize) -> Result<Device, BudgetError> {
    Err(BudgetError::Device {
        device: format!("cuda:{index}"),
        why: "this evolve was built without CUDA support; rebuild with `cargo build --release -p evolve-cli --features cuda` on a machine with the CUDA toolkit, or run on the CPU with `--budget 1xcpu`".into(),
    })
}

#[cfg(feature = "wgpu")]
fn wgpu_device(index: Option<usize>) -> Result<Device, BudgetError> {
    use burn::tensor::DeviceKind;
    let name = DeviceChoice::Wgpu(index).to_string();
    let kind = index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu);
    // burn's `Device::wgpu` would panic on first use without an adapter; `init` asks wgpu for
    // one (and registers the runtime) and returns why not instead.
    Device::wgpu_options().device_kind(kind).init().map_err(|e| BudgetError::Device {
        device: name,
        why: format!("no usable wgpu GPU adapter ({e}); is a Vulkan, Metal or DirectX 12 driver installed? Or run on the CPU with `--budget 1xcpu`"),
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(index: Option<usize>) -> Result<Device, BudgetError> {
    Err(BudgetError::Device {
        device: DeviceChoice::Wgpu(index).to_string(),
        why: "this evolve was built without wgpu support; rebuild with `cargo build --release -p evolve-cli --features wgpu`, or run on the CPU with `--budget 1xcpu`".into(),
    })
}

/// Asks the CUDA driver API directly (`cuInit`, `cuDeviceGetCount` from `libcuda.so.1`),
/// without burn, so a missing driver or GPU is an error message instead of a panic.
#[cfg(feature = "cuda")]
mod cuda_driver {
    pub fn device_count() -> Result<usize, String> {
        const LIB: &str = if cfg!(windows) { "nvcuda.dll" } else { "libcuda.so.1" };
        // SAFETY: loading the NVIDIA driver library runs its initializers, which is what any
        // CUDA program does first; the two symbols have these C signatures in the driver API.
        unsafe {
            let lib = libloading::Library::new(LIB).map_err(|e| format!("the CUDA driver library {LIB} cannot be loaded ({e}); is an NVIDIA driver installed?"))?;
            let init: libloading::Symbol<unsafe extern "C" fn(u32) -> i32> = lib.get(b"cuInit\0").map_err(|e| format!("{LIB} has no cuInit: {e}"))?;
            let count_fn: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> =
                lib.get(b"cuDeviceGetCount\0").map_err(|e| format!("{LIB} has no cuDeviceGetCount: {e}"))?;
            let status = init(0);
            if status != 0 {
                return Err(format!("cuInit failed with CUDA error {status} (no usable GPU, or the driver and the device disagree)"));
            }
            let mut count = 0i32;
            let status = count_fn(&mut count);
            if status != 0 {
                return Err(format!("cuDeviceGetCount failed with CUDA error {status}"));
            }
            Ok(count.max(0) as usize)
        }
    }
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
    fn gpus_without_gpu_support_are_refused_but_cpu_pools_are_not() {
        if !cfg!(feature = "cuda") {
            let err = Budget::parse("2xRTX4090").unwrap().device().unwrap_err().to_string();
            assert!(err.contains("without GPU support") && err.contains("1xcpu"), "{err}");
        }
        // A CPU pool: several worker processes sharing this machine's cores.
        assert!(Budget::parse("2xcpu").unwrap().device().is_ok());
        assert!(Budget::parse("1xcpu").unwrap().device().is_ok());
    }

    #[test]
    fn device_choices_parse_and_unavailable_ones_are_errors() {
        assert_eq!(DeviceChoice::parse("cpu").unwrap(), DeviceChoice::Cpu);
        assert_eq!(DeviceChoice::parse("cuda:3").unwrap(), DeviceChoice::Cuda(3));
        assert_eq!(DeviceChoice::parse("wgpu").unwrap(), DeviceChoice::Wgpu(None));
        assert_eq!(DeviceChoice::parse("wgpu:1").unwrap(), DeviceChoice::Wgpu(Some(1)));
        for bad in ["gpu", "cuda", "cuda:", "cuda:-1", "cuda:x", "CPU", "wgpu:", "wgpu:gpu", "wgpu1"] {
            let err = DeviceChoice::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("cuda:N") && err.contains("wgpu:N"), "{bad}: {err}");
        }
        assert!(DeviceChoice::Cpu.device().is_ok());
        // No GPU here: without the feature it names the rebuild; with it, the missing driver.
        let err = DeviceChoice::Cuda(0).device().unwrap_err().to_string();
        assert!(err.contains("cuda:0") && (err.contains("--features cuda") || err.contains("libcuda")), "{err}");
        // Likewise wgpu: without the feature it names the rebuild; with it (and no GPU adapter
        // on a CI machine) an error, never a panic.
        if !cfg!(feature = "wgpu") {
            let err = DeviceChoice::Wgpu(Some(2)).device().unwrap_err().to_string();
            assert!(err.contains("wgpu:2") && err.contains("--features wgpu"), "{err}");
        }
        let err = Budget::parse("1xcpu").unwrap().device_with(Some(DeviceChoice::Wgpu(None))).unwrap_err().to_string();
        assert!(err.contains("--device wgpu") && err.contains("--device cpu"), "{err}");
    }
}
