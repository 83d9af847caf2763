//! `alipay-adapter`: the Alipay channel adapter process.
use std::sync::Arc;

use anyhow::Context as _;
use channel_alipay::adapter::AlipayAdapter;
use channel_alipay::config::{AlipayKeys, AlipaySettings};
use channel_kit::KitSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    channel_kit::init_logging();
    let kit = KitSettings::from_env(50062, 8082, 9562)?;
    let settings = AlipaySettings::from_env()?;
    // ADAPTER_ENV=production: refuse weak or exposed secrets before anything is served.
    kit.production_check(|| settings.production_check())?;
    let keys = AlipayKeys::load(&settings)?;
    let http = kit.http_client().context("building the HTTP client")?;
    tracing::info!(gateway = %settings.gateway, app_id = %settings.app_id, "alipay adapter configured");
    let adapter = Arc::new(AlipayAdapter::new(&settings, keys, http, chrono::Utc::now));
    channel_kit::serve(adapter, kit, channel_kit::shutdown_signal()).await
}
