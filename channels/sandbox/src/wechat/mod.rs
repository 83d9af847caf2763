//! The WeChat Pay API v3 stand-in.

pub mod bill;
pub mod protocol;
pub mod server;

pub use server::{Wechat, router};
