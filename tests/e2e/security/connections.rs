//! Connection budgets: one app at its caps (handshakes, connections, watchers)
//! does not slow another; the socket is created with its final mode.
