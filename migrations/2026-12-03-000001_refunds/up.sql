-- Refunds. The amount a refund takes is reserved on the attempt that captured the money, by one
-- conditional UPDATE (`refund_reserved_minor + amount <= paid_minor`), in the transaction that
-- records the refund: the sum of refunds that are not FAILED can never exceed what was paid,
-- whatever the concurrency or the number of replicas. The CHECKs say it once more.

ALTER TABLE payment_attempts
    -- Sum of this attempt's refunds that are not FAILED (PENDING, PROCESSING, SUCCEEDED).
    ADD COLUMN refund_reserved_minor bigint NOT NULL DEFAULT 0,
    -- Sum of this attempt's SUCCEEDED refunds.
    ADD COLUMN refunded_minor        bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT payment_attempts_refunds_within_paid CHECK (
        refunded_minor >= 0
        AND refunded_minor <= refund_reserved_minor
        AND refund_reserved_minor <= coalesce(paid_minor, 0));

CREATE TABLE refunds (
    id                 uuid        PRIMARY KEY,
    app_id             text        NOT NULL,
    order_id           uuid        NOT NULL REFERENCES orders (id),
    -- The attempt whose money goes back: the one that paid the order, or (duplicate refunds) the
    -- duplicate attempt.
    attempt_id         uuid        NOT NULL REFERENCES payment_attempts (id),
    -- The app's number: its idempotency key, unique per app.
    refund_request_no  text        NOT NULL,
    -- What the channel knows the refund by; minted once, re-sent unchanged on every retry.
    out_refund_no      text        NOT NULL UNIQUE CHECK (out_refund_no ~ '^[A-Za-z0-9]{8,32}$'),
    channel            text        NOT NULL CHECK (channel IN ('WECHAT', 'ALIPAY', 'UNIONPAY')),
    amount_minor       bigint      NOT NULL CHECK (amount_minor > 0),
    currency           char(3)     NOT NULL,
    reason             text        NOT NULL DEFAULT '',
    status             text        NOT NULL CHECK (status IN ('PENDING', 'PROCESSING', 'SUCCEEDED', 'FAILED')),
    channel_refund_no  text,
    -- The channel's last status text, and its refusal when the refund FAILED.
    channel_status     text,
    failure_reason     text,
    -- Who asked: the calling app and, when given, the person.
    requested_by       text        NOT NULL,
    operator           text,
    -- The encoded CreateRefund response of the call that created the refund, replayed to repeats.
    create_response    bytea,
    -- The refund query job: due time (also its claim lease), queries made so far, and the flag
    -- set when the outcome stayed unknown past the last query.
    next_query_at      timestamptz,
    queries            integer     NOT NULL DEFAULT 0,
    needs_attention    boolean     NOT NULL DEFAULT false,
    version            bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    succeeded_at       timestamptz,
    -- Set when this refund gives back a duplicate payment (the results issue): it then touches
    -- neither the order's refunded total nor its status.
    duplicate_payment_id uuid      UNIQUE REFERENCES duplicate_payments (id),
    CONSTRAINT refunds_app_request_no UNIQUE (app_id, refund_request_no)
);
CREATE INDEX refunds_order ON refunds (order_id, created_at);
CREATE INDEX refunds_app_created ON refunds (app_id, created_at DESC, id DESC);
-- The refund query job claims due, unsettled refunds.
CREATE INDEX refunds_due ON refunds (next_query_at)
    WHERE status IN ('PENDING', 'PROCESSING') AND NOT needs_attention;

-- Every refund status change, with who or what made it.
CREATE TABLE refund_transitions (
    refund_id   uuid        NOT NULL REFERENCES refunds (id),
    version     bigint      NOT NULL,
    from_status text,
    to_status   text        NOT NULL,
    -- 'app:<id>', 'operator:<name>', 'channel:<event id>', 'query', 'answer'.
    actor       text        NOT NULL,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (refund_id, version)
);
