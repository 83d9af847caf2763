//! Statements written as SQL text that Postgres still parses and plans once per connection.
//!
//! diesel's `sql_query` marks its statement unsafe to cache, so every call is parsed and
//! planned again (an unnamed statement each time). The hot paths' single-statement writes are
//! long `WITH` queries that diesel's DSL cannot express, and re-planning them on every call
//! would cost Postgres more CPU than the round trips they save. [`cached!`](crate::cached) is `sql_query` for
//! constant SQL: diesel keys its prepared-statement cache by the text and the bind types, so
//! the statement is prepared once per pooled connection and only executed afterwards. The
//! macro gives each call site a type of its own, which diesel uses as the cache key: finding
//! the prepared statement then costs a type-id lookup, not building and hashing the SQL text
//! (a kilobyte for the longest) on every call.
//!
//! The text names its parameters `$1`…`$n`, in the order of the [`Cached::bind`] calls; one may
//! appear several times. (diesel numbers placeholders itself, so each occurrence is sent as a
//! parameter of its own: the text must not contain `$<digit>` anywhere else, such as in a
//! string literal or a dollar-quoted body.)
//!
//! ```ignore
//! cached!("SELECT $1::int8 + 1 AS n").bind::<BigInt, _>(41_i64).get_result::<N>(conn)
//! ```
use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};

/// Constant SQL and its parameters; see the module documentation. `Id` names the statement
/// (one type per call site, from [`cached!`](crate::cached)).
pub struct Cached<'a, Id> {
    sql: &'static str,
    binds: Vec<Box<dyn BindValue + 'a>>,
    id: PhantomData<fn() -> Id>,
}

/// A [`Cached`] statement whose type names this call site; see the module documentation.
#[macro_export]
macro_rules! cached {
    ($sql:expr $(,)?) => {{
        /// The statement's identity in diesel's prepared-statement cache.
        struct Statement;
        $crate::storage::sql::Cached::<Statement>::new($sql)
    }};
}

impl<'a, Id> Cached<'a, Id> {
    /// Constant SQL; prefer [`cached!`](crate::cached), which supplies a unique `Id`.
    pub fn new(sql: &'static str) -> Self {
        Self {
            sql,
            binds: Vec::new(),
            id: PhantomData,
        }
    }

    /// Binds the next parameter (`$1`, then `$2`, …) as SQL type `ST`.
    #[must_use]
    pub fn bind<ST, V>(mut self, value: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'a,
        ST: 'a,
    {
        self.binds
            .push(Box::new(Typed::<ST, V>(value, PhantomData)));
        self
    }
}

/// One parameter, whatever its Rust and SQL types.
trait BindValue: Send {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Typed<ST, V>(V, PhantomData<fn() -> ST>);

impl<ST, V> BindValue for Typed<ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg> + Send,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, V>(&self.0)
    }
}

impl<Id: 'static> QueryId for Cached<'_, Id> {
    // One type per call site, and its SQL and bind types never change: the type is the key.
    type QueryId = Id;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<Id> QueryFragment<Pg> for Cached<'_, Id> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let bytes = self.sql.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let n: usize = self.sql[i + 1..i + 1 + digits].parse().unwrap_or(0);
                let bind = n
                    .checked_sub(1)
                    .and_then(|k| self.binds.get(k))
                    .ok_or_else(|| {
                        diesel::result::Error::QueryBuilderError(
                            format!("${n} has no bound value").into(),
                        )
                    })?;
                out.push_sql(&self.sql[start..i]);
                bind.push(&mut out)?;
                i += 1 + digits;
                start = i;
            } else {
                i += 1;
            }
        }
        out.push_sql(&self.sql[start..]);
        Ok(())
    }
}

impl<Id> Query for Cached<'_, Id> {
    type SqlType = Untyped;
}

impl<Conn, Id> RunQueryDsl<Conn> for Cached<'_, Id> {}

/// Whether `e` is `payd_require` refusing a single-statement write (SQLSTATE PD001, see the
/// migration `single_statement_writes`): the statement changed nothing.
pub fn is_refusal(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(_, info)
        if info.message().starts_with("single-statement write refused"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use diesel::sql_types::{BigInt, Text};
    use diesel::{Connection, PgConnection, QueryableByName};

    use super::*;

    #[derive(Debug, QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = Text)]
        s: String,
    }

    fn conn() -> PgConnection {
        let base = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        PgConnection::establish(&format!("{base}/postgres")).unwrap()
    }

    fn prepared(conn: &mut PgConnection, marker: &str) -> i64 {
        #[derive(QueryableByName)]
        struct C {
            #[diesel(sql_type = BigInt)]
            c: i64,
        }
        diesel::sql_query(
            "SELECT count(*) AS c FROM pg_prepared_statements WHERE statement LIKE $1",
        )
        .bind::<Text, _>(format!("%{marker}%"))
        .get_result::<C>(conn)
        .unwrap()
        .c
    }

    /// The point of [`Cached`]: later calls reuse the statement the first prepared, where
    /// `sql_query` prepares none (it sends an unnamed statement every time).
    #[test]
    fn a_cached_statement_is_prepared_once_per_connection_and_sql_query_is_not() {
        let mut conn = conn();
        for i in 0..3_i64 {
            let r: Row = cached!("SELECT $1::int8 + 1 AS n, $2::text AS s /* cached-marker */")
                .bind::<BigInt, _>(i)
                .bind::<Text, _>("x")
                .get_result(&mut conn)
                .unwrap();
            assert_eq!((r.n, r.s.as_str()), (i + 1, "x"));
        }
        assert_eq!(prepared(&mut conn, "cached-marker */"), 1);
        for i in 0..3_i64 {
            let _: Row =
                diesel::sql_query("SELECT $1::int8 + 1 AS n, $2::text AS s /* unnamed-marker */")
                    .bind::<BigInt, _>(i)
                    .bind::<Text, _>("x")
                    .get_result(&mut conn)
                    .unwrap();
        }
        assert_eq!(prepared(&mut conn, "unnamed-marker */"), 0);
    }

    #[test]
    fn a_parameter_may_appear_several_times_and_in_any_order() {
        let mut conn = conn();
        let r: Row = cached!("SELECT $2::int8 * 10 + $1::int8 + $2::int8 AS n, $3 || $3 AS s")
            .bind::<BigInt, _>(1_i64)
            .bind::<BigInt, _>(7_i64)
            .bind::<Text, _>("ab".to_owned())
            .get_result(&mut conn)
            .unwrap();
        assert_eq!((r.n, r.s.as_str()), (78, "abab"));
        let missing = cached!("SELECT $1::int8 AS n, $2 AS s")
            .bind::<BigInt, _>(1_i64)
            .get_result::<Row>(&mut conn);
        assert!(missing.is_err());
    }

    #[test]
    fn a_refusal_rolls_the_statement_back_and_is_recognised() {
        let mut conn = conn();
        // The migration's `payd_require`, as a temporary function: `postgres` is not migrated.
        use diesel::connection::SimpleConnection as _;
        conn.batch_execute(
            "CREATE TEMP TABLE t (n int); \
             CREATE OR REPLACE FUNCTION pg_temp.require(ok boolean, what text) RETURNS boolean \
             LANGUAGE plpgsql AS $f$ BEGIN IF ok IS NOT TRUE THEN \
             RAISE EXCEPTION 'single-statement write refused: %', what USING ERRCODE = 'PD001'; \
             END IF; RETURN true; END $f$",
        )
        .unwrap();
        let e = cached!(
            "WITH w AS (INSERT INTO t VALUES (1) RETURNING n) \
             SELECT n::int8 AS n, 'x' AS s FROM w WHERE pg_temp.require(n = $1, 'test')",
        )
        .bind::<diesel::sql_types::Integer, _>(2)
        .get_result::<Row>(&mut conn)
        .unwrap_err();
        assert!(is_refusal(&e), "{e:?}");
        #[derive(QueryableByName)]
        struct C {
            #[diesel(sql_type = BigInt)]
            c: i64,
        }
        let left: C = diesel::sql_query("SELECT count(*) AS c FROM t")
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(left.c, 0, "the insert was not rolled back");
    }
}
