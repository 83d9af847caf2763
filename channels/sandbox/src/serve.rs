//! Starting a platform process: load its key files, build its router, serve it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::alipay::Alipay;
use crate::keyfiles::{AlipayKeyFiles, UnionpayKeyFiles, WechatKeyFiles};
use crate::unionpay::Unionpay;
use crate::wechat::Wechat;

/// Which platform a process plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// WeChat Pay API v3.
    Wechat,
    /// Alipay open API gateway.
    Alipay,
    /// UnionPay online gateway 5.1.0.
    Unionpay,
}

/// Setting a platform up failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Key material could not be loaded.
    #[error(transparent)]
    Keys(#[from] crate::keyfiles::KeyFileError),
    /// Key material was loaded but is unusable.
    #[error("{0}")]
    Setup(String),
    /// Binding or serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// The full router (platform API plus `/sandbox/` control API) for `which`, with keys from
/// `keys_dir/<platform>/`.
///
/// # Errors
/// [`ServeError::Keys`] or [`ServeError::Setup`].
pub fn build_router(which: Which, keys_dir: &Path, time_scale: f64) -> Result<Router, ServeError> {
    Ok(match which {
        Which::Wechat => {
            let files = WechatKeyFiles::load(&keys_dir.join("wechat"))?;
            let wechat =
                Wechat::new(files, time_scale).map_err(|e| ServeError::Setup(e.to_string()))?;
            crate::wechat::router(Arc::new(wechat))
        }
        Which::Alipay => {
            let files = AlipayKeyFiles::load(&keys_dir.join("alipay"))?;
            let alipay =
                Alipay::new(files, time_scale).map_err(|e| ServeError::Setup(e.to_string()))?;
            crate::alipay::router(Arc::new(alipay))
        }
        Which::Unionpay => {
            let files = UnionpayKeyFiles::load(&keys_dir.join("unionpay"))?;
            let unionpay =
                Unionpay::new(files, time_scale).map_err(|e| ServeError::Setup(e.to_string()))?;
            crate::unionpay::router(Arc::new(unionpay))
        }
    })
}

/// Binds `listen` and returns the listener with its actual address (port 0 picks one).
///
/// # Errors
/// [`ServeError::Io`].
pub async fn bind(listen: &str) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves `router` on `listener` until the process is stopped.
///
/// # Errors
/// [`ServeError::Io`].
pub async fn run(listener: TcpListener, router: Router) -> Result<(), ServeError> {
    use axum::serve::ListenerExt;
    // Answers go out as headers then body; without TCP_NODELAY Nagle's algorithm holds the body
    // until the client's delayed ACK (~40 ms) on every call.
    let listener = listener.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}
