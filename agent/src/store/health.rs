//! What the store knows to be wrong with itself: damage found when it opened (writes
//! the sealed state file says were made but the database no longer holds, a count
//! that does not add up, a state file gone) or while it runs (a page sled cannot
//! read). Reported by `/v1/health`, the `latchkey_store_problems` metric and one
//! error line each; kept in the sealed state file until an operator acknowledges
//! them, so a restart does not make them disappear.

use serde::{Deserialize, Serialize};

/// One problem, as `/v1/health` shows it. Names paths and versions, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Problem {
    /// Changes the agent acknowledged are not in the database (sled dropped the end of
    /// its log, or an older copy of the database was put back).
    LostWrites {
        /// Changes the state file counts.
        expected_generation: u64,
        /// Changes the database holds.
        found_generation: u64,
        /// The lost changes the state file names (its most recent ones), newest last.
        missing: Vec<Missing>,
        /// Lost changes beyond those named.
        unnamed: u64,
    },
    /// The index holds a different number of secrets than the database counted.
    CountMismatch {
        /// Secrets counted with the last committed change.
        expected: u64,
        /// Index entries found.
        found: u64,
    },
    /// The sealed state file is missing or does not open, so lost writes cannot be
    /// ruled out.
    StateFile {
        /// `missing` or `unreadable`.
        reason: StateFileReason,
    },
    /// The database's own sealed counters did not open; they were rebuilt.
    CountersUnreadable,
    /// sled could not read part of the database.
    Unreadable {
        /// The secret whose read failed, when a read failed.
        path: Option<String>,
        /// What sled said.
        detail: String,
    },
}

/// Why the state file is a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateFileReason {
    /// Gone, while the database says it was written.
    Missing,
    /// There, but it fails its integrity check.
    Unreadable,
}

/// One change that was acknowledged and is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The secret.
    pub path: String,
    /// What the change was.
    #[serde(flatten)]
    pub op: Op,
}

/// A change to the store, as the state file remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A new version was written.
    Write {
        /// Its number.
        version: u64,
    },
    /// The secret was deleted.
    Delete,
    /// A label was moved or removed.
    Label {
        /// The label.
        label: String,
    },
    /// The lifecycle journal entry was written or removed.
    Journal,
    /// The upstream's deletion of the current version was recorded or cleared.
    Deletion,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::LostWrites {
                expected_generation,
                found_generation,
                missing,
                unnamed,
            } => {
                write!(
                    f,
                    "{} acknowledged change(s) are missing from the database (it holds change {found_generation}, the state file counts {expected_generation})",
                    expected_generation.saturating_sub(*found_generation)
                )?;
                if !missing.is_empty() {
                    f.write_str(": ")?;
                    for (i, m) in missing.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        match &m.op {
                            Op::Write { version } => write!(f, "{} v{version}", m.path)?,
                            Op::Delete => write!(f, "delete of {}", m.path)?,
                            Op::Label { label } => write!(f, "label {label} of {}", m.path)?,
                            Op::Journal => write!(f, "journal of {}", m.path)?,
                            Op::Deletion => write!(f, "upstream deletion mark of {}", m.path)?,
                        }
                    }
                }
                if *unnamed > 0 {
                    write!(f, " and {unnamed} more not named")?;
                }
                Ok(())
            }
            Problem::CountMismatch { expected, found } => write!(
                f,
                "the index holds {found} secret(s), the database counted {expected}"
            ),
            Problem::StateFile { reason } => match reason {
                StateFileReason::Missing => {
                    f.write_str("the sealed state file is missing: lost writes cannot be ruled out")
                }
                StateFileReason::Unreadable => f.write_str(
                    "the sealed state file fails its integrity check: lost writes cannot be ruled out",
                ),
            },
            Problem::CountersUnreadable => {
                f.write_str("the database's sealed counters fail their integrity check")
            }
            Problem::Unreadable { path, detail } => match path {
                Some(path) => write!(f, "sled cannot read the data of {path}: {detail}"),
                None => write!(f, "sled cannot read part of the database: {detail}"),
            },
        }
    }
}
