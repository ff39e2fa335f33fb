//! On-disk tampering and corruption: a flipped byte, a truncated log or a replayed
//! old record is detected and reported, never silently served or lost.
