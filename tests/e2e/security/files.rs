//! File modes: everything the agent creates in its folder is private to it,
//! created that way.
