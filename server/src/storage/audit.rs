//! The append-only audit log (`audit_records`): inserts and the filtered, newest-first listing.
//! The table refuses UPDATE, DELETE and TRUNCATE by trigger, so nothing here changes a row.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::StorageError;
use super::schema::audit_records;

/// Serialize: a single-statement write passes the record as one JSON parameter
/// (`jsonb_populate_record`), so the field names are the column names.
#[derive(Debug, Clone, Insertable, serde::Serialize)]
#[diesel(table_name = audit_records)]
pub struct NewAuditRecord<'a> {
    pub actor_kind: &'a str,
    pub app_id: Option<&'a str>,
    pub operator: Option<&'a str>,
    pub adapter: Option<&'a str>,
    pub action: &'a str,
    pub outcome: &'a str,
    pub code: &'a str,
    pub request_id: &'a str,
    pub order_id: Option<Uuid>,
    pub out_trade_no: Option<&'a str>,
    pub refund_id: Option<Uuid>,
    pub recon_run_id: Option<Uuid>,
    pub target: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = audit_records, check_for_backend(diesel::pg::Pg))]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_kind: String,
    pub app_id: Option<String>,
    pub operator: Option<String>,
    pub adapter: Option<String>,
    pub action: String,
    pub outcome: String,
    pub code: String,
    pub request_id: String,
    pub order_id: Option<Uuid>,
    pub out_trade_no: Option<String>,
    pub refund_id: Option<Uuid>,
    pub recon_run_id: Option<Uuid>,
    pub target: Option<String>,
}

/// Appends one record (one round trip, no lock).
pub fn insert(conn: &mut PgConnection, r: &NewAuditRecord<'_>) -> Result<(), StorageError> {
    diesel::insert_into(audit_records::table)
        .values(r)
        .execute(conn)?;
    Ok(())
}

/// What ListAuditRecords filters on; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub app_id: Option<String>,
    pub action: Option<String>,
    /// Matched against every target column (a UUID also against the id columns).
    pub target: Option<String>,
    /// The last id of the previous page: only older records.
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Newest first (by id: ids grow with insertion order), keyset-paged on the id.
pub fn list(conn: &mut PgConnection, f: &AuditFilter) -> Result<Vec<AuditRow>, StorageError> {
    let mut q = audit_records::table
        .select(AuditRow::as_select())
        .into_boxed();
    if let Some(from) = f.from {
        q = q.filter(audit_records::at.ge(from));
    }
    if let Some(to) = f.to {
        q = q.filter(audit_records::at.lt(to));
    }
    if let Some(app) = &f.app_id {
        q = q.filter(audit_records::app_id.eq(app.clone()));
    }
    if let Some(action) = &f.action {
        q = q.filter(audit_records::action.eq(action.clone()));
    }
    if let Some(t) = &f.target {
        let by_text = audit_records::out_trade_no
            .eq(t.clone())
            .or(audit_records::target.eq(t.clone()));
        q = match Uuid::try_parse(t) {
            Ok(id) => q.filter(
                by_text
                    .or(audit_records::order_id.eq(id))
                    .or(audit_records::refund_id.eq(id))
                    .or(audit_records::recon_run_id.eq(id)),
            ),
            Err(_) => q.filter(by_text),
        };
    }
    if let Some(before) = f.before_id {
        q = q.filter(audit_records::id.lt(before));
    }
    Ok(q.order(audit_records::id.desc())
        .limit(f.limit)
        .load(conn)?)
}
