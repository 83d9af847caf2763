//! The domain's enums as diesel `Text` values, so a row's status, channel or method is parsed
//! once, when the row loads; a value the domain does not know fails that load (a corrupt row).
//! The domain stays free of diesel: the derives are made here, on proxies (`foreign_derive`).
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

use crate::domain::{AttemptStatus, Channel, OrderStatus, PayMethod, RefundStatus};

macro_rules! text_enum {
    ($proxy:ident, $ty:ty) => {
        #[derive(AsExpression, FromSqlRow)]
        #[diesel(foreign_derive, sql_type = Text)]
        #[allow(dead_code)]
        struct $proxy($ty);

        impl ToSql<Text, Pg> for $ty {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $ty {
            fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(value)?;
                text.parse::<$ty>()
                    .map_err(|e| format!("corrupt {}: {e}", stringify!($ty)).into())
            }
        }
    };
}

text_enum!(OrderStatusText, OrderStatus);
text_enum!(AttemptStatusText, AttemptStatus);
text_enum!(ChannelText, Channel);
text_enum!(PayMethodText, PayMethod);
text_enum!(RefundStatusText, RefundStatus);
