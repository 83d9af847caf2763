//! The channel-event inbox and recorded duplicate payments.
use diesel::prelude::*;
use uuid::Uuid;

use super::StorageError;
use super::schema::{channel_events, duplicate_payments};

/// Whether this channel event was already recorded. A plain index lookup: a repeated callback
/// costs one read, no lock and no WAL.
pub fn seen(conn: &mut PgConnection, channel: &str, event_id: &str) -> Result<bool, StorageError> {
    Ok(diesel::select(diesel::dsl::exists(
        channel_events::table
            .filter(channel_events::channel.eq(channel))
            .filter(channel_events::event_id.eq(event_id)),
    ))
    .get_result(conn)?)
}

pub struct NewEvent<'a> {
    pub channel: &'a str,
    pub event_id: &'a str,
    pub kind: &'a str,
    pub out_trade_no: &'a str,
    pub state: &'a str,
    pub outcome: &'a str,
    pub payload: serde_json::Value,
}

/// Records the event; `false` when a concurrent delivery recorded it first (the caller then rolls
/// back whatever it did).
pub fn record(conn: &mut PgConnection, e: &NewEvent<'_>) -> Result<bool, StorageError> {
    let n = diesel::insert_into(channel_events::table)
        .values((
            channel_events::channel.eq(e.channel),
            channel_events::event_id.eq(e.event_id),
            channel_events::kind.eq(e.kind),
            channel_events::out_trade_no.eq(e.out_trade_no),
            channel_events::state.eq(e.state),
            channel_events::outcome.eq(e.outcome),
            channel_events::payload.eq(&e.payload),
        ))
        .on_conflict((channel_events::channel, channel_events::event_id))
        .do_nothing()
        .execute(conn)?;
    Ok(n == 1)
}

/// Records a second successful payment of an already paid order (once per attempt); its id, or
/// `None` when this attempt's duplicate was already recorded.
pub fn record_duplicate(
    conn: &mut PgConnection,
    order_id: Uuid,
    attempt_id: Uuid,
    amount_minor: i64,
    currency: &str,
) -> Result<Option<Uuid>, StorageError> {
    let id = Uuid::now_v7();
    let n = diesel::insert_into(duplicate_payments::table)
        .values((
            duplicate_payments::id.eq(id),
            duplicate_payments::order_id.eq(order_id),
            duplicate_payments::attempt_id.eq(attempt_id),
            duplicate_payments::amount_minor.eq(amount_minor),
            duplicate_payments::currency.eq(currency),
            duplicate_payments::status.eq("DETECTED"),
        ))
        .on_conflict(duplicate_payments::attempt_id)
        .do_nothing()
        .execute(conn)?;
    Ok((n == 1).then_some(id))
}

/// Moves a duplicate payment to `status` (REFUNDING, REFUNDED, REFUND_FAILED).
pub fn set_duplicate_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
) -> Result<(), StorageError> {
    diesel::update(duplicate_payments::table.filter(duplicate_payments::id.eq(id)))
        .set(duplicate_payments::status.eq(status))
        .execute(conn)?;
    Ok(())
}
