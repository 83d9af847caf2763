//! `unionpay-adapter`: the UnionPay channel adapter process.
use std::sync::Arc;

use anyhow::Context as _;
use channel_kit::KitSettings;
use channel_unionpay::adapter::UnionpayAdapter;
use channel_unionpay::config::{UnionpayKeys, UnionpaySettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    channel_kit::init_logging();
    let kit = KitSettings::from_env(50063, 8083, 9563)?;
    let settings = UnionpaySettings::from_env()?;
    // ADAPTER_ENV=production: refuse weak or exposed secrets before anything is served.
    kit.production_check(|| settings.production_check())?;
    let keys = UnionpayKeys::load(&settings)?;
    let http = kit.http_client().context("building the HTTP client")?;
    tracing::info!(
        gateway = %settings.gateway_base,
        mer_id = %settings.mer_id,
        front_register = settings.front_register,
        "unionpay adapter configured"
    );
    let adapter = Arc::new(UnionpayAdapter::new(
        &settings,
        keys,
        http,
        chrono::Utc::now,
    ));
    channel_kit::serve(adapter, kit, channel_kit::shutdown_signal()).await
}
