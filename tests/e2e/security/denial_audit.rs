//! Denials are audited without a flood of them flooding the trail: repeated
//! denials coalesce into one record a second per client and reason, with counts.
