-- Payment attempts (支付流水), the channel-event inbox and recorded duplicate payments.

CREATE TABLE payment_attempts (
    id                 uuid        PRIMARY KEY,
    order_id           uuid        NOT NULL REFERENCES orders (id),
    -- What the channel knows the attempt by: snowflake-style, unique across replicas.
    out_trade_no       text        NOT NULL UNIQUE CHECK (out_trade_no ~ '^[A-Za-z0-9]{8,32}$'),
    channel            text        NOT NULL CHECK (channel IN ('WECHAT', 'ALIPAY', 'UNIONPAY')),
    method             text        NOT NULL,
    amount_minor       bigint      NOT NULL CHECK (amount_minor > 0),
    currency           char(3)     NOT NULL,
    status             text        NOT NULL CHECK (status IN ('INIT', 'PAYING', 'SUCCEEDED', 'FAILED', 'CLOSED')),
    -- SHA-256 of the payer identity: a reused attempt must be for the same payer, and the
    -- identifier itself is never stored in clear.
    payer_digest       bytea       NOT NULL,
    -- What the payer's device needs, as returned by the channel's prepay (replayed on reuse).
    pay_params         jsonb,
    channel_prepay_id  text,
    channel_trade_no   text,
    paid_minor         bigint,
    version            bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    succeeded_at       timestamptz
);
-- At most one open attempt per order, whatever Redis does: a second concurrent Pay that slipped
-- past an expired lock fails on this index instead of opening a second trade.
CREATE UNIQUE INDEX payment_attempts_one_open_per_order ON payment_attempts (order_id)
    WHERE status IN ('INIT', 'PAYING');
CREATE INDEX payment_attempts_order ON payment_attempts (order_id, created_at);
-- The status poller (later) scans open attempts by age.
CREATE INDEX payment_attempts_open ON payment_attempts (updated_at) WHERE status IN ('INIT', 'PAYING');

-- Inbox: every result a channel reported, once. The unique key makes a repeated callback a no-op.
CREATE TABLE channel_events (
    id           bigserial   PRIMARY KEY,
    channel      text        NOT NULL,
    event_id     text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('PAYMENT', 'REFUND')),
    out_trade_no text        NOT NULL,
    state        text        NOT NULL,
    -- What the core did with it: APPLIED, DUPLICATE_PAYMENT, AMOUNT_MISMATCH, UNKNOWN_ATTEMPT, NO_CHANGE.
    outcome      text        NOT NULL,
    payload      jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channel_events_unique UNIQUE (channel, event_id)
);

-- A second successful attempt on an already paid order: money taken twice, to be refunded.
CREATE TABLE duplicate_payments (
    id              uuid        PRIMARY KEY,
    order_id        uuid        NOT NULL REFERENCES orders (id),
    attempt_id      uuid        NOT NULL UNIQUE REFERENCES payment_attempts (id),
    amount_minor    bigint      NOT NULL,
    currency        char(3)     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('DETECTED', 'REFUNDING', 'REFUNDED')),
    detected_at     timestamptz NOT NULL DEFAULT now()
);
