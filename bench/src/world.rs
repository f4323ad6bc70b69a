//! `meridian-bench world SCENARIO`: Meridian in a simulated world. Every party (the
//! control plane, each edge, each provider, each group of users) lives in its own
//! network namespace; the delay between two of them comes from their distance and is
//! applied to their packets on the wire ([`delay`]); bandwidth caps come from
//! `tc tbf`. The real binaries run inside; the report judges residency and compares
//! completion times with an oracle that knows the true delays ([`report`]).

pub mod delay;
pub mod netns;
pub mod report;
pub mod run;
pub mod scenario;
pub mod users;

pub use run::{WorldOptions, run};
