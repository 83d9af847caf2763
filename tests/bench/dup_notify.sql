\set oid random(1, 20000)
UPDATE pay_orders SET status = 2, version = version + 1, updated_at = now() WHERE id = :oid AND status = 0;
