//! Meridian's control plane: the fleet's single source of truth.
//!
//! Today it holds the durable [`store`]; the admin API, push to edges and fleet
//! health build on it. It validates every change with the same code the edges use
//! (`meridian_proto::Fleet::validate`) and must never store a fleet that fails it.

pub mod store;
