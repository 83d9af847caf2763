//! The Alipay open API gateway stand-in.

pub mod bill;
pub mod protocol;
pub mod server;

pub use server::{Alipay, router};
