//! connmon as a library: the agent, the command line and every subsystem, so the `connmon`
//! binary stays a thin `main` and integration tests can import metric names and types instead of
//! grepping the source. Dependencies point one way, from the top of this list down:
//! `cli` → `agent` → `web`, `export`, `alerts` → `model` → `scan`, `kernel`, `attribution`,
//! `config`.
pub mod agent;
pub mod alerts;
pub mod attribution;
pub mod cli;
pub mod config;
pub mod errno;
pub mod export;
pub mod kernel;
pub mod model;
pub mod scan;
pub mod web;
