WITH c AS (SELECT id FROM pay_outbox WHERE sent_at IS NULL ORDER BY id LIMIT 50 FOR UPDATE SKIP LOCKED) UPDATE pay_outbox o SET sent_at = now() FROM c WHERE o.id = c.id;
