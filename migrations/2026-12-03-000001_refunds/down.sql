DROP TABLE refund_transitions;
DROP TABLE refunds;
ALTER TABLE payment_attempts
    DROP CONSTRAINT payment_attempts_refunds_within_paid,
    DROP COLUMN refunded_minor,
    DROP COLUMN refund_reserved_minor;
