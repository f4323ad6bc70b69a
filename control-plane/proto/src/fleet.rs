//! The fleet: jurisdiction groups, providers, the residency policy and tenants, as
//! one document. The control plane pushes it; an edge without a control plane reads
//! it from its config file. [`Fleet::validate`] is the one check both sides run.

use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::{Jurisdiction, ProviderSpec};

/// A named set of jurisdictions, such as `EU` or `EEA`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Name used by policies as `group:NAME`.
    pub name: String,
    /// Member jurisdictions.
    pub members: Vec<Jurisdiction>,
}

/// Which requests belong to a tenant: a host, a path prefix, or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Exact request host (lower case, no port); any host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, starting with `/`; any path when absent.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

impl Binding {
    /// Whether this binding claims a request to `host` for `path`.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        self.host.as_deref().is_none_or(|h| host == Some(h))
            && self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }

    /// Whether some request could match both bindings.
    pub fn overlaps(&self, other: &Binding) -> bool {
        let hosts = match (&self.host, &other.host) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let paths = match (&self.path_prefix, &other.path_prefix) {
            (Some(a), Some(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
            _ => true,
        };
        hosts && paths
    }
}

/// A customer of the storage platform whose data has a legal home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Identifier.
    pub id: String,
    /// The jurisdiction whose law governs the tenant's data.
    pub home: Jurisdiction,
    /// Requests that belong to the tenant.
    pub bindings: Vec<Binding>,
}

/// Everything an edge needs to decide where a request may go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Jurisdiction groups.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Storage providers.
    #[serde(default)]
    pub providers: Vec<ProviderSpec>,
    /// The residency policy.
    pub policy: Policy,
    /// Tenants and their bindings.
    #[serde(default)]
    pub tenants: Vec<Tenant>,
}
