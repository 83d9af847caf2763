//! The WeChat Pay API v3 stand-in.

pub mod bill;
pub mod proto;
pub mod server;

pub use server::{Wechat, router};
