//! End-to-end tests: the real agent and real upstream servers on loopback.

#[path = "../harness/moto.rs"]
mod moto;
#[path = "../harness/openbao.rs"]
mod openbao;
#[path = "../harness/spawn.rs"]
mod spawn;

mod upstream_clients;
