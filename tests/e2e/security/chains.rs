//! Client certificate chains: only end-entity certificates issued directly by the
//! agent's CA are accepted, whatever the CRL setting.
