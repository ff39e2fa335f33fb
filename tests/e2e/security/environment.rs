//! Secrets in the agent's environment (the KEK, SQL DSNs, env fallbacks) stay out
//! of child processes and templates.
