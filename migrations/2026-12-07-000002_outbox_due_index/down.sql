DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox_events (next_delivery_at) WHERE delivery = 'PENDING';
