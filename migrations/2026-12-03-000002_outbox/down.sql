ALTER TABLE duplicate_payments DROP CONSTRAINT duplicate_payments_status_check;
ALTER TABLE duplicate_payments ADD CONSTRAINT duplicate_payments_status_check
    CHECK (status IN ('DETECTED', 'REFUNDING', 'REFUNDED'));
DROP INDEX payment_attempts_query_due;
ALTER TABLE payment_attempts
    DROP COLUMN needs_attention,
    DROP COLUMN queries,
    DROP COLUMN next_query_at;
DROP TABLE outbox_events;
DROP SEQUENCE outbox_stream;
ALTER TABLE orders DROP COLUMN event_seq;
