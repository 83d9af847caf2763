//! The UnionPay online gateway 5.1.0 stand-in.

pub mod bill;
pub mod protocol;
pub mod server;

pub use server::{Unionpay, router};
