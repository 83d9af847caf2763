//! Pure domain: money, ids, the order state machine and validated requests. No IO, no diesel, no
//! tonic: everything here is checked by plain unit tests.
pub mod attempt;
pub mod idempotency;
pub mod ids;
pub mod money;
pub mod order;
pub mod refund;
pub mod snowflake;
pub mod validation;

pub use attempt::{
    Attempt, AttemptEvent, AttemptStatus, Channel, PayMethod, PaymentResult, TradeState,
};
pub use idempotency::KeyClaim;
pub use ids::{AppId, IdempotencyKey, MerchantOrderNo, OrderId};
pub use money::{Currency, Money};
pub use order::{IllegalTransition, Order, OrderEvent, OrderFilter, OrderStatus};
pub use refund::{
    ChannelRefundState, IllegalRefundTransition, NewRefund, Refund, RefundEvent, RefundFilter,
    RefundResult, RefundStatus,
};
pub use validation::{FieldError, NewOrder, OrderLimits, Subject};
