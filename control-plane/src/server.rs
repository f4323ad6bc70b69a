//! Assembles a running control plane from a checked config: the store, the hub
//! that publishes its versions, the admin API and, when configured, push.

use std::sync::Arc;

use crate::api::{self, ApiError, ApiHandle};
use crate::config::CpConfig;
use crate::push::{self, Hub, PushError, PushHandle};
use crate::store::{Store, StoreError};
use crate::telemetry::{self, TelemetryError, TelemetryHandle};

/// The control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store failed to open or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin API failed to start.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Push failed to start.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The telemetry listener failed to start.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// A running control plane; dropping it stops serving.
#[derive(Debug)]
pub struct ControlPlane {
    /// The admin API.
    pub api: ApiHandle,
    /// Push, when configured.
    pub push: Option<PushHandle>,
    /// Shared push state.
    pub hub: Arc<Hub>,
    /// Metrics and health, when configured.
    pub telemetry: Option<TelemetryHandle>,
}

/// Opens the store and starts everything the config asks for.
pub async fn start(cfg: &CpConfig) -> Result<ControlPlane, ServeError> {
    let store = Arc::new(Store::open(&cfg.data_dir)?);
    let hub = Arc::new(Hub::new(store.epoch(), store.current()?, cfg.fleet_health.clone()));
    let api = api::start(cfg, store, hub.clone()).await?;
    let push = match &cfg.push {
        Some(p) => Some(push::start(p, hub.clone()).await?),
        None => None,
    };
    // Last: it reports ready as soon as it answers.
    let telemetry = match &cfg.telemetry {
        Some(t) => Some(telemetry::start(t.listen, hub.clone()).await?),
        None => None,
    };
    Ok(ControlPlane {
        api,
        push,
        hub,
        telemetry,
    })
}
