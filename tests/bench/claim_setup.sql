-- B_claim: :rows unsent outbox rows, more than the claims of the run can take.
INSERT INTO pay_outbox (order_id, event_type, payload)
SELECT g, 1, '{"e":"created"}' FROM generate_series(1, :rows) g;
VACUUM ANALYZE pay_outbox;
