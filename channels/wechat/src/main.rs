//! `wechat-adapter`: the WeChat Pay channel adapter process.
use std::sync::Arc;

use anyhow::Context as _;
use channel_kit::KitSettings;
use channel_wechat::adapter::WechatAdapter;
use channel_wechat::config::{WechatKeys, WechatSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    channel_kit::init_logging();
    let kit = KitSettings::from_env(50061, 8081, 9561)?;
    let settings = WechatSettings::from_env()?;
    // ADAPTER_ENV=production: refuse weak or exposed secrets before anything is served.
    kit.production_check(|| settings.production_check())?;
    let keys = WechatKeys::load(&settings)?;
    let http = kit.http_client().context("building the HTTP client")?;
    tracing::info!(api_base = %settings.api_base, mchid = %settings.mchid, "wechat adapter configured");
    let adapter = Arc::new(WechatAdapter::new(&settings, keys, http, chrono::Utc::now));
    if settings.certificate_download {
        // A failure is not fatal: configured public keys may suffice, and an unknown serial
        // retries the download.
        match adapter.refresh_certificates().await {
            Ok(serials) => tracing::info!(?serials, "platform certificates downloaded"),
            Err(e) => tracing::warn!(error = %e, "platform certificate download at start failed"),
        }
        adapter.spawn_certificate_refresh();
    }
    channel_kit::serve(adapter, kit, channel_kit::shutdown_signal()).await
}
