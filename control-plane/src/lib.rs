//! Meridian's control plane: the fleet's single source of truth.
//!
//! Today: the durable [`store`] and the authenticated admin [`api`]; push to edges
//! and fleet health build on them. It validates every change with the same code the edges use
//! (`meridian_proto::Fleet::validate`) and must never store a fleet that fails it.

pub mod api;
pub mod client;
pub mod config;
pub mod store;
