//! Meridian's control plane: the fleet's single source of truth.
//!
//! The durable [`store`], the authenticated admin [`api`], [`push`], which keeps
//! every edge on the current fleet version and aggregates fleet health, and
//! [`telemetry`], which serves metrics and health to scrapers. It validates every change with the same code the edges use
//! (`meridian_proto::Fleet::validate`) and must never store a fleet that fails it.

pub mod api;
pub mod client;
pub mod config;
pub mod push;
pub mod server;
pub mod store;
pub mod telemetry;
