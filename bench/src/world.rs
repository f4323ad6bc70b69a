//! `meridian-bench world`: Meridian in a simulated world. Parties live in network
//! namespaces; the delay between two of them comes from their distance and is applied
//! to their packets on the wire ([`delay`]); bandwidth caps come from `tc tbf`.

pub mod delay;
pub mod netns;
