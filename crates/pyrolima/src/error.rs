//! pyrolima's error type.

use std::path::PathBuf;
use std::time::Duration;

use semver::Version;

use crate::spec::SpecError;

/// Everything that can go wrong driving Lima and the VM.
#[derive(Debug, thiserror::Error)]
pub enum LimaError {
    /// No `limactl` found.
    #[error(
        "limactl not found ({searched}); install Lima (https://lima-vm.io/docs/installation/) \
         or point --limactl / LIMACTL at it"
    )]
    NotInstalled {
        /// Where pyrolima looked.
        searched: String,
    },
    /// Lima older than pyrolima supports.
    #[error("Lima {found} is too old: pyrolima needs Lima {need} or later (upgrade Lima, e.g. `brew upgrade lima`)")]
    TooOld {
        /// `limactl --version`.
        found: Version,
        /// The minimum.
        need: Version,
    },
    /// A limactl call ran past its deadline (it was killed).
    #[error("`{cmd}` did not finish within {after:?} and was killed")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The deadline.
        after: Duration,
    },
    /// A limactl call exited unsuccessfully.
    #[error("`{cmd}` failed ({}): {stderr}", code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit code {c}")))]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit code (None: killed by a signal).
        code: Option<i32>,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// A limactl call printed something pyrolima cannot read.
    #[error("unexpected output from `{cmd}`: {detail}")]
    BadOutput {
        /// The command line.
        cmd: String,
        /// What was wrong.
        detail: String,
    },
    /// limactl could not be started at all.
    #[error("cannot run `{cmd}`")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The spec cannot be turned into a Lima config.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An instance of that name exists and was not made by pyrolima.
    #[error(
        "a Lima instance named {name:?} exists and was not created by pyrolima; \
         use another --name or remove it yourself (limactl delete {name})"
    )]
    Foreign {
        /// The instance name.
        name: String,
    },
    /// The build artifacts (OCI archive, deploy dir) are missing or inconsistent.
    #[error("{path}: {detail}")]
    Artifact {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong (and how to fix it).
        detail: String,
    },
    /// The ingress did not answer in time.
    #[error("the ingress at {url} was not ready within {after:?} (last: {last})")]
    NotReady {
        /// The URL probed.
        url: String,
        /// The deadline.
        after: Duration,
        /// The last probe's outcome.
        last: String,
    },
    /// Local file handling (temporary config, bundle).
    #[error("{context}")]
    Io {
        /// What pyrolima was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl LimaError {
    /// Errors a retry will not fix: a configuration or installation problem (exit code
    /// 2 in the CLI). Everything else is a runtime failure worth retrying.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            LimaError::NotInstalled { .. }
                | LimaError::TooOld { .. }
                | LimaError::Spec(_)
                | LimaError::Foreign { .. }
                | LimaError::Artifact { .. }
        )
    }
}
