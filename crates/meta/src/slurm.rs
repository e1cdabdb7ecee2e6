//! The Slurm launcher: a pool's workers as one `sbatch` job array, a task per device of the
//! budget (`--gres=gpu:1` each on a GPU budget), that connect back to the control plane. A
//! watcher follows the tasks with `squeue`; a task that ends while the run goes on (cancelled,
//! preempted, timed out, its node failed) has its leases handed out again at once and is
//! submitted again as a one-task array, so Slurm killing a worker costs only its lease. When the
//! pool stops, every task still queued or running is cancelled with `scancel`.
//!
//! Only this module runs Slurm commands. They come from `PATH` and find the cluster the usual
//! way (`SLURM_CONF` or the system configuration).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::ControlPlane;
use crate::pool::PoolOptions;
use crate::Error;

/// How often the watcher asks `squeue` about the tasks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// States of a task that still holds (or will hold) its worker.
const ALIVE: &[&str] = &["PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"];

/// One worker of the pool as Slurm runs it.
#[derive(Clone, Debug)]
struct Task {
    /// The worker's name (`w<index>`), which is also what the control plane knows it by.
    name: String,
    index: usize,
    /// Slurm's id of the task now serving this worker: `<array job>_<index>`.
    job: String,
}

/// What the submissions share: the batch script and the arguments around it.
struct Submitter {
    script: PathBuf,
    logs: PathBuf,
    extra: Vec<String>,
    gres: bool,
    token: Option<String>,
}

impl Submitter {
    /// Submits tasks `indices` of the array; returns the array job's id.
    fn submit(&self, indices: &str) -> Result<String, Error> {
        let mut sbatch = Command::new(SBATCH);
        sbatch
            .arg("--parsable")
            .arg(format!("--array={indices}"))
            .arg("--job-name=evolve-worker")
            .arg(format!("--output={}", self.logs.join("slurm-%A_%a.log").display()));
        if self.gres {
            sbatch.arg("--gres=gpu:1");
        }
        sbatch.args(&self.extra).arg(&self.script);
        if let Some(token) = &self.token {
            // sbatch exports its environment to the job (Slurm's default `--export=ALL`).
            sbatch.env("EVOLVE_TOKEN", token);
        }
        let out = sbatch.output().map_err(no_client)?;
        if !out.status.success() {
            return Err(Error::Invalid(format!("--launcher slurm: sbatch refused the workers' job array: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        // `--parsable` prints `jobid` or `jobid;cluster`.
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Invalid(format!("--launcher slurm: sbatch printed `{}`, not a job id", text.trim())));
        }
        Ok(id)
    }
}

const SBATCH: &str = "sbatch";

fn no_client(e: std::io::Error) -> Error {
    Error::Invalid(format!("--launcher slurm: cannot run `{SBATCH}` ({e}); is Slurm's client installed and on PATH?"))
}

/// Fails unless `sbatch` runs and the cluster accepts `extra` (`sbatch --test-only` submits
/// nothing): checked before a run touches its ledger.
pub(crate) fn check_submission(extra: &[String]) -> Result<(), Error> {
    let out = Command::new(SBATCH).arg("--test-only").args(extra).args(["--wrap", "true"]).output().map_err(no_client)?;
    if !out.status.success() {
        return Err(Error::Invalid(format!("--launcher slurm: sbatch refuses --sbatch-args `{}`: {}", extra.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// The running job array of a pool.
pub(crate) struct SlurmWorkers {
    tasks: Arc<Mutex<Vec<Task>>>,
    stopping: Arc<AtomicBool>,
}

/// `'text'` for sh, with embedded single quotes escaped.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The batch script: each array task runs the worker of its index with that worker's roles
/// (`generator,trainer`).
fn batch_script(workers: &[(String, String)], exe: &Path, connect: &str, device: &str) -> String {
    let mut cases = String::new();
    for (i, (_, roles)) in workers.iter().enumerate() {
        cases.push_str(&format!("  {i}) roles={roles} ;;\n"));
    }
    format!(
        "#!/bin/sh\n\
         # evolve pool workers: one array task per device of the budget, roles by the plan.\n\
         # Written by `evolve start --launcher slurm`; submitted with sbatch.\n\
         case \"$SLURM_ARRAY_TASK_ID\" in\n{cases}  *) echo \"no worker $SLURM_ARRAY_TASK_ID in this pool's plan\" >&2; exit 2 ;;\n\
         esac\n\
         echo \"evolve worker w$SLURM_ARRAY_TASK_ID on $(hostname): job ${{SLURM_JOB_ID:-}}, CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}} SLURM_JOB_GPUS=${{SLURM_JOB_GPUS:-}}\"\n\
         exec {} worker --connect {} --role \"$roles\" --device {} --name \"w$SLURM_ARRAY_TASK_ID\"\n",
        quoted(&exe.display().to_string()),
        quoted(connect),
        quoted(device),
    )
}

/// `squeue`'s view of the given jobs: task id (`123_4`) → state.
fn states(jobs: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut ids: Vec<&str> = jobs.iter().filter_map(|j| j.split('_').next()).collect();
    ids.sort_unstable();
    ids.dedup();
    let out = Command::new("squeue").args(["-h", "-r", "-t", "all", "-o", "%i %T", "-j", &ids.join(",")]).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        // squeue says "Invalid job id specified" once every listed job has been purged.
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Invalid job id") {
            return Ok(Vec::new());
        }
        return Err(err.trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_once(' ')).map(|(id, state)| (id.to_string(), state.trim().to_string())).collect())
}

impl SlurmWorkers {
    /// Writes the batch script to `logs/workers.sbatch`, submits the array and starts the
    /// watcher. `workers` are (name, roles) in task order; `device` is each worker's `--device`
    /// (Slurm makes the GPU it grants the job's `cuda:0`; a GPU device asks for `--gres=gpu:1`).
    pub fn start(options: &PoolOptions, workers: &[(String, String)], exe: &Path, connect: &str, device: &str, logs: &Path, plane: Arc<ControlPlane>) -> Result<SlurmWorkers, Error> {
        let script = logs.join("workers.sbatch");
        evolve_store::write_atomic(&script, batch_script(workers, exe, connect, device).as_bytes())?;
        let submitter = Submitter { script, logs: logs.to_path_buf(), extra: options.sbatch_args.clone(), gres: device != "cpu", token: options.token.clone() };
        let array = submitter.submit(&format!("0-{}", workers.len().saturating_sub(1)))?;
        tracing::info!(job = %array, workers = workers.len(), "worker job array submitted to Slurm");
        let tasks: Vec<Task> = workers.iter().enumerate().map(|(index, (name, _))| Task { name: name.clone(), index, job: format!("{array}_{index}") }).collect();
        let tasks = Arc::new(Mutex::new(tasks));
        let stopping = Arc::new(AtomicBool::new(false));
        let (watched, stop) = (tasks.clone(), stopping.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(WATCH_EVERY);
                let mut tasks = watched.lock().unwrap_or_else(|e| e.into_inner());
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let jobs: Vec<String> = tasks.iter().map(|t| t.job.clone()).collect();
                let listed = match states(&jobs) {
                    Ok(listed) => listed,
                    Err(e) => {
                        tracing::warn!("squeue failed ({e}); asking again");
                        continue;
                    }
                };
                for task in tasks.iter_mut() {
                    let state = listed.iter().find(|(id, _)| *id == task.job).map(|(_, s)| s.as_str());
                    if state.is_some_and(|s| ALIVE.contains(&s)) {
                        continue;
                    }
                    let state = state.unwrap_or("gone from squeue");
                    tracing::warn!(worker = %task.name, job = %task.job, state, "Slurm ended the worker's job: its leases go back to the queue and the worker is submitted again");
                    plane.release_worker(&task.name);
                    match submitter.submit(&task.index.to_string()) {
                        Ok(array) => task.job = format!("{array}_{}", task.index),
                        Err(e) => tracing::error!(worker = %task.name, "{e}"),
                    }
                }
            }
        });
        Ok(SlurmWorkers { tasks, stopping })
    }
}

impl Drop for SlurmWorkers {
    /// Cancels every task: the run is over (or the controller is going down).
    fn drop(&mut self) {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        self.stopping.store(true, Ordering::Relaxed);
        let jobs: Vec<String> = tasks.iter().map(|t| t.job.clone()).collect();
        match Command::new("scancel").args(&jobs).status() {
            Ok(s) if s.success() => tracing::info!(jobs = %jobs.join(","), "worker jobs cancelled"),
            Ok(s) => tracing::warn!(jobs = %jobs.join(","), "scancel exited with {s}"),
            Err(e) => tracing::warn!("cannot run scancel ({e}); cancel the evolve-worker jobs by hand"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_script_maps_each_task_to_its_roles_and_quotes_paths() {
        let workers = vec![("w0".to_string(), "trainer".to_string()), ("w1".to_string(), "generator,discriminator".to_string())];
        let script = batch_script(&workers, Path::new("/opt/it's here/evolve"), "http://10.0.0.5:7070", "cuda:0");
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("  0) roles=trainer ;;\n  1) roles=generator,discriminator ;;\n"), "{script}");
        assert!(script.contains(r"exec '/opt/it'\''s here/evolve' worker --connect 'http://10.0.0.5:7070' --role"), "{script}");
        assert!(script.contains("--device 'cuda:0' --name \"w$SLURM_ARRAY_TASK_ID\""), "{script}");
        // An index outside the plan is an error, not a worker without roles.
        assert!(script.contains("*) echo") && script.contains("exit 2"));
    }
}
