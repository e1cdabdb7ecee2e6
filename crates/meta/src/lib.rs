//! The meta-controller: it owns the run. It pretrains the base, then drives each cycle —
//! generator (mine, synthesize), discriminator (score), trainer (fine-tune with surgery), gate,
//! recompression — and is the only writer of the ledger: every step's facts land there in their
//! own transaction, and a cycle's verdict with all its evaluations lands in one.
//!
//! Architecture invariants: roles are reached only through the job/result types in `roles`
//! (artifact hashes in, artifact hashes out), never by sharing a model in memory, so a process
//! boundary can later cut between them. The meta-controller never computes gradients or answers
//! problems itself. It owns the budget (`budget`) and the accept/reject rule (`gate`).

pub mod ablation;
pub mod budget;
pub mod control;
mod controller;
pub mod gate;
pub mod lock;
pub mod plan;
pub mod pool;
pub mod progress;
mod resume;
pub mod roles;
pub mod simulate;
mod slurm;
pub mod worker;

pub use ablation::{AblateOptions, Ablation, AblationReport, Claim, ablate};
pub use budget::{Budget, BudgetError, DeviceChoice};
pub use pool::{Launcher, PoolOptions};
pub use controller::{Outcomes, RunOptions, RunSummary, StartMode, Variant, run};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error(transparent)]
    Curriculum(#[from] evolve_curriculum::CurriculumError),
    #[error(transparent)]
    Ledger(#[from] evolve_ledger::LedgerError),
    #[error(transparent)]
    Store(#[from] evolve_store::StoreError),
    #[error(transparent)]
    Checkpoint(#[from] evolve_model::CheckpointError),
    #[error(transparent)]
    ModelConfig(#[from] evolve_model::ConfigError),
    #[error(transparent)]
    Compress(#[from] evolve_compress::CompressError),
    #[error("example batch: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
    /// The reward-hacking alarm stopped the run.
    #[error("{0}")]
    Alarm(String),
    /// Another process holds the ledger's run lock.
    #[error("{0}")]
    Locked(String),
}
