-- outbox_due serves one query: the claim's scan of due deliveries in `next_delivery_at` order
-- (`next_delivery_at <= now()` implies the new predicate). Its predicate was `delivery =
-- 'PENDING'` alone, which made it a candidate for any question about pending rows; the claim's
-- "earliest pending event of this ordering key" then scanned it whole, once per candidate,
-- whenever the statistics said about one row was pending (the normal state after autovacuum's
-- last ANALYZE), instead of probing outbox_key_pending. With this predicate only the claim's
-- scan can use it.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox_events (next_delivery_at)
    WHERE delivery = 'PENDING' AND next_delivery_at IS NOT NULL;
