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
        event_seq -> Int8,
        transition_reason -> Nullable<Text>,
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
        refund_reserved_minor -> Int8,
        refunded_minor -> Int8,
        next_query_at -> Nullable<Timestamptz>,
        queries -> Int4,
        needs_attention -> Bool,
    }
}

diesel::table! {
    outbox_events (id) {
        id -> Int8,
        event_id -> Uuid,
        app_id -> Text,
        order_id -> Nullable<Uuid>,
        order_seq -> Int8,
        event_type -> Text,
        payload -> Bytea,
        created_at -> Timestamptz,
        stream_seq -> Nullable<Int8>,
        delivery -> Text,
        delivery_attempts -> Int4,
        next_delivery_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<Timestamptz>,
        stream_key -> Nullable<Text>,
        ordering_key -> Text,
    }
}

diesel::table! {
    refunds (id) {
        id -> Uuid,
        app_id -> Text,
        order_id -> Uuid,
        attempt_id -> Uuid,
        refund_request_no -> Text,
        out_refund_no -> Text,
        channel -> Text,
        amount_minor -> Int8,
        currency -> Bpchar,
        reason -> Text,
        status -> Text,
        channel_refund_no -> Nullable<Text>,
        channel_status -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        requested_by -> Text,
        operator -> Nullable<Text>,
        create_response -> Nullable<Bytea>,
        next_query_at -> Nullable<Timestamptz>,
        queries -> Int4,
        needs_attention -> Bool,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        succeeded_at -> Nullable<Timestamptz>,
        duplicate_payment_id -> Nullable<Uuid>,
        reason_sealed -> Nullable<Text>,
    }
}

diesel::table! {
    refund_transitions (refund_id, version) {
        refund_id -> Uuid,
        version -> Int8,
        from_status -> Nullable<Text>,
        to_status -> Text,
        actor -> Text,
        reason -> Text,
        created_at -> Timestamptz,
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

diesel::table! {
    audit_records (id) {
        id -> Int8,
        at -> Timestamptz,
        actor_kind -> Text,
        app_id -> Nullable<Text>,
        operator -> Nullable<Text>,
        adapter -> Nullable<Text>,
        action -> Text,
        outcome -> Text,
        code -> Text,
        request_id -> Text,
        order_id -> Nullable<Uuid>,
        out_trade_no -> Nullable<Text>,
        refund_id -> Nullable<Uuid>,
        recon_run_id -> Nullable<Uuid>,
        target -> Nullable<Text>,
    }
}

diesel::table! {
    /// A run's staged statement lines (UNLOGGED scratch, written by COPY). The table has no
    /// primary key in the database; the key named here only satisfies `table!`.
    recon_statement_lines (run_id, source_line) {
        run_id -> Uuid,
        source_line -> Int8,
        kind -> Text,
        out_trade_no -> Text,
        out_refund_no -> Text,
        channel_trade_no -> Text,
        state -> Text,
        amount_minor -> Int8,
        currency -> Text,
        at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(order_transitions -> orders (order_id));
diesel::joinable!(payment_attempts -> orders (order_id));
diesel::joinable!(refunds -> orders (order_id));
diesel::joinable!(refunds -> payment_attempts (attempt_id));
diesel::joinable!(refund_transitions -> refunds (refund_id));
diesel::joinable!(outbox_events -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(
    orders,
    order_transitions,
    idempotency_keys,
    payment_attempts,
    channel_events,
    duplicate_payments,
    refunds,
    refund_transitions,
    outbox_events
);
