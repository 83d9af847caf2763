-- Orders, their transition history and idempotency keys: the foundation of the money path.
-- Statuses are CHECKed text (never free strings); money is bigint minor units + ISO 4217 code.

CREATE TABLE orders (
    id                uuid        PRIMARY KEY,
    app_id            text        NOT NULL,
    merchant_order_no text        NOT NULL,
    amount_minor      bigint      NOT NULL CHECK (amount_minor > 0),
    currency          char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subject           text        NOT NULL,
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status            text        NOT NULL CHECK (status IN
                        ('PENDING', 'PAYING', 'PAID', 'PARTIALLY_REFUNDED', 'REFUNDED', 'CLOSED')),
    paid_minor        bigint      NOT NULL DEFAULT 0 CHECK (paid_minor >= 0),
    refunded_minor    bigint      NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= paid_minor),
    -- Optimistic locking: every UPDATE checks and increments it.
    version           bigint      NOT NULL DEFAULT 0,
    -- Highest lock fencing token that has written this row; a stale lock holder's write (lower
    -- token) matches no row.
    fence             bigint      NOT NULL DEFAULT 0,
    expires_at        timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    closed_at         timestamptz,
    CONSTRAINT orders_app_merchant_order_no UNIQUE (app_id, merchant_order_no)
);

-- ListOrders: newest first per app, optionally by status.
CREATE INDEX orders_app_created ON orders (app_id, created_at DESC, id DESC);
CREATE INDEX orders_app_status_created ON orders (app_id, status, created_at DESC, id DESC);
-- The expiry job scans open orders by deadline.
CREATE INDEX orders_open_expiry ON orders (expires_at) WHERE status IN ('PENDING', 'PAYING');

-- One row per state change: the history that proves each (order, state) was entered once and only
-- along legal edges. Keyed by the version the change produced.
CREATE TABLE order_transitions (
    order_id    uuid        NOT NULL REFERENCES orders (id),
    version     bigint      NOT NULL,
    from_status text,
    to_status   text        NOT NULL,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, version)
);

-- Stripe-style idempotency: written in the same transaction as the business change it guards.
CREATE TABLE idempotency_keys (
    app_id        text        NOT NULL,
    idem_key      text        NOT NULL,
    -- gRPC method plus SHA-256 of the encoded request with the key cleared.
    method        text        NOT NULL,
    fingerprint   bytea       NOT NULL,
    -- Encoded response message; NULL only inside the writing transaction.
    response      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
