//! Diesel table definitions, written to match `migrations/` (checked by the storage tests, which
//! run every query against a freshly migrated database).
diesel::table! {
    orders (id) {
        id -> Uuid,
        app_id -> Text,
        merchant_order_no -> Text,
        amount_minor -> Int8,
        currency -> Bpchar,
        subject -> Text,
        metadata -> Jsonb,
        status -> Text,
        paid_minor -> Int8,
        refunded_minor -> Int8,
        version -> Int8,
        fence -> Int8,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        closed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    order_transitions (order_id, version) {
        order_id -> Uuid,
        version -> Int8,
        from_status -> Nullable<Text>,
        to_status -> Text,
        reason -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (app_id, idem_key) {
        app_id -> Text,
        idem_key -> Text,
        method -> Text,
        fingerprint -> Bytea,
        response -> Nullable<Bytea>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(order_transitions -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(orders, order_transitions, idempotency_keys);
