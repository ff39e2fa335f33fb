//! The plugin sandbox: network grants cannot be widened by address tricks, and the
//! SQL capability runs one statement per call with safe quoting.
