\set m random(1, 1000)
\set amt random(1, 1000000)
BEGIN;
INSERT INTO pay_orders (merchant_id, merchant_order_no, amount) VALUES (:m, gen_random_uuid()::text, :amt) ON CONFLICT DO NOTHING RETURNING id AS oid \gset
INSERT INTO pay_outbox (order_id, event_type, payload) VALUES (:oid, 1, '{"e":"created"}');
COMMIT;
BEGIN;
UPDATE pay_orders SET status = 2, version = version + 1, updated_at = now() WHERE id = :oid AND status = 0;
INSERT INTO pay_outbox (order_id, event_type, payload) VALUES (:oid, 2, '{"e":"paid"}');
COMMIT;
