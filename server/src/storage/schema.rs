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

diesel::table! {
    payment_attempts (id) {
        id -> Uuid,
        order_id -> Uuid,
        out_trade_no -> Text,
        channel -> Text,
        method -> Text,
        amount_minor -> Int8,
        currency -> Bpchar,
        status -> Text,
        payer_digest -> Bytea,
        pay_params -> Nullable<Jsonb>,
        channel_prepay_id -> Nullable<Text>,
        channel_trade_no -> Nullable<Text>,
        paid_minor -> Nullable<Int8>,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        succeeded_at -> Nullable<Timestamptz>,
        pay_deadline -> Timestamptz,
    }
}

diesel::table! {
    channel_events (id) {
        id -> Int8,
        channel -> Text,
        event_id -> Text,
        kind -> Text,
        out_trade_no -> Text,
        state -> Text,
        outcome -> Text,
        payload -> Jsonb,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    duplicate_payments (id) {
        id -> Uuid,
        order_id -> Uuid,
        attempt_id -> Uuid,
        amount_minor -> Int8,
        currency -> Bpchar,
        status -> Text,
        detected_at -> Timestamptz,
    }
}

diesel::joinable!(order_transitions -> orders (order_id));
diesel::joinable!(payment_attempts -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(
    orders,
    order_transitions,
    idempotency_keys,
    payment_attempts,
    channel_events,
    duplicate_payments
);
