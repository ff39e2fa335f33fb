//! Template destinations an attacker can reach: symlinks, FIFOs and folders
//! writable by others; template errors and filters that could leak or inject.
