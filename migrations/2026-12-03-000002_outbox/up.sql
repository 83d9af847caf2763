-- The transactional outbox, and the bookkeeping of active payment queries.
--
-- Every fact (order.paid, refund.succeeded, …) is a row written in the transaction that made it
-- true. Rows get their place in the app's stream (`stream_seq`) only after they are committed, from
-- one sequencer at a time (an advisory lock), so readers following `stream_seq` never skip a row
-- that commits late: ids from a bigserial are taken at insert, not at commit, and would.

ALTER TABLE orders ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

CREATE SEQUENCE outbox_stream AS bigint;

CREATE TABLE outbox_events (
    id                bigserial   PRIMARY KEY,
    event_id          uuid        NOT NULL UNIQUE,
    app_id            text        NOT NULL,
    order_id          uuid        NOT NULL REFERENCES orders (id),
    -- 1, 2, … per order, taken from orders.event_seq under the order's row lock.
    order_seq         bigint      NOT NULL,
    event_type        text        NOT NULL,
    -- The encoded payment.v1.Event, cursor left empty.
    payload           bytea       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Position in the stream, assigned after commit by the sequencer.
    stream_seq        bigint      UNIQUE,
    -- Push delivery to the app's EventSink: NONE when the app has no sink.
    delivery          text        NOT NULL CHECK (delivery IN ('NONE', 'PENDING', 'DELIVERED', 'DEAD')),
    delivery_attempts integer     NOT NULL DEFAULT 0,
    next_delivery_at  timestamptz,
    last_error        text,
    delivered_at      timestamptz,
    CONSTRAINT outbox_events_order_seq UNIQUE (order_id, order_seq)
);
CREATE INDEX outbox_unsequenced ON outbox_events (id) WHERE stream_seq IS NULL;
CREATE INDEX outbox_app_stream ON outbox_events (app_id, stream_seq) WHERE stream_seq IS NOT NULL;
CREATE INDEX outbox_due ON outbox_events (next_delivery_at) WHERE delivery = 'PENDING';
CREATE INDEX outbox_order_pending ON outbox_events (order_id, order_seq) WHERE delivery = 'PENDING';

-- Active queries of open attempts: when the next query is due (also its claim lease), how many
-- were made, and the flag for a person when the outcome stayed unknown past the last one.
ALTER TABLE payment_attempts
    ADD COLUMN next_query_at   timestamptz,
    ADD COLUMN queries         integer NOT NULL DEFAULT 0,
    ADD COLUMN needs_attention boolean NOT NULL DEFAULT false;
UPDATE payment_attempts SET next_query_at = now() WHERE status IN ('INIT', 'PAYING');
CREATE INDEX payment_attempts_query_due ON payment_attempts (next_query_at)
    WHERE status IN ('INIT', 'PAYING') AND NOT needs_attention;

-- The automatic refund of a duplicate payment, and how it ended.
ALTER TABLE duplicate_payments DROP CONSTRAINT duplicate_payments_status_check;
ALTER TABLE duplicate_payments ADD CONSTRAINT duplicate_payments_status_check
    CHECK (status IN ('DETECTED', 'REFUNDING', 'REFUNDED', 'REFUND_FAILED'));
