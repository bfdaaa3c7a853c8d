//! majordomo: an LLM API gateway on Pingora.
//!
//! Modules mirror the request flow: [`provider`] (which API, where),
//! [`keys`] (who may call), [`gateway`] (the Pingora phases), [`store`]
//! (PostgreSQL / SQLite); [`config`] and [`cli`] around them.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod gateway;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod pricing;
pub mod provider;
pub mod serve;
pub mod sink;
pub mod store;
pub mod usage;
