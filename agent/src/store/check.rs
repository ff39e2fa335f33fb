//! The check a store gets when it opens: the counters sealed inside sled against the
//! sealed state file beside it, and the counted secrets against the index.
//!
//! | found | meaning | reported as |
//! | --- | --- | --- |
//! | the file counts more changes than sled holds | sled lost acknowledged writes (its recovery drops the log after a bad checksum), or an older copy of the database was put back | [`Problem::LostWrites`], naming what the file's recent changes name |
//! | sled counts as many or more | normal (sled may hold writes made after the last flush) | nothing |
//! | the index holds another number of secrets than sled counted | entries lost or added outside the store | [`Problem::CountMismatch`] |
//! | the file is missing or does not open | it was removed or damaged: lost writes cannot be ruled out | [`Problem::StateFile`] |
//! | sled's counters do not open | rebuilt from the index | [`Problem::CountersUnreadable`] |
//! | sled cannot read an index page | what can be read is served | [`Problem::Unreadable`] |
//!
//! Problems the state file already carried are kept. After the check the counters are
//! set so that numbering goes on past what the file counted, and the caller writes the
//! state file anew.

use std::path::Path;

use super::health::{Problem, StateFileReason};
use super::ledger::{self, Counters, Ledger, STATE_KEY};
use super::{Error, Trees};
use crate::crypto::DataKey;

/// What the check leaves: the ledger to go on with (problems included) and the number
/// of secrets the index holds.
pub(super) struct Found {
    pub(super) ledger: Ledger,
    pub(super) secrets: u64,
}

pub(super) fn at_open(trees: &Trees<'_>, key: &DataKey, dir: &Path) -> Result<Found, Error> {
    let mut problems = Vec::new();
    let stored = match trees.meta.get(STATE_KEY)? {
        Some(raw) => {
            let opened = Counters::open(key, &raw);
            if opened.is_none() {
                problems.push(Problem::CountersUnreadable);
            }
            opened
        }
        None => {
            problems.push(Problem::CountersUnreadable);
            None
        }
    };

    let mut secrets = 0u64;
    for item in trees.index.iter().keys() {
        match item {
            Ok(_) => secrets += 1,
            Err(e) => {
                problems.push(Problem::Unreadable {
                    path: None,
                    detail: e.to_string(),
                });
                break;
            }
        }
    }

    let file = match ledger::read(dir, key) {
        Ok(Some(file)) => Some(file),
        Ok(None) => {
            problems.push(Problem::StateFile {
                reason: StateFileReason::Missing,
            });
            None
        }
        Err(ledger::ReadError::Unreadable) => {
            problems.push(Problem::StateFile {
                reason: StateFileReason::Unreadable,
            });
            None
        }
        Err(ledger::ReadError::Io(source)) => {
            return Err(Error::StateFile {
                path: dir.join(ledger::STATE_FILE),
                source,
            })
        }
    };

    let mut counters = stored.unwrap_or(Counters {
        generation: 0,
        secrets,
    });
    if let (Some(stored), Some(file)) = (stored, &file) {
        if file.counters.generation > stored.generation {
            let (missing, unnamed) = file.after(stored.generation);
            problems.push(Problem::LostWrites {
                expected_generation: file.counters.generation,
                found_generation: stored.generation,
                missing,
                unnamed,
            });
        }
    }
    if stored.is_some() && counters.secrets != secrets {
        problems.push(Problem::CountMismatch {
            expected: counters.secrets,
            found: secrets,
        });
    }

    let mut ledger = file.unwrap_or_default();
    // Number on past every change the file counted, so no number means two changes.
    let generation = counters.generation.max(ledger.counters.generation);
    if stored
        != Some(Counters {
            generation,
            secrets,
        })
    {
        counters = Counters {
            generation,
            secrets,
        };
        trees.meta.insert(STATE_KEY, counters.seal(key)?)?;
        trees.db.flush()?;
    }
    ledger.counters = counters;
    for problem in problems {
        ledger.report(problem);
    }
    Ok(Found { ledger, secrets })
}
