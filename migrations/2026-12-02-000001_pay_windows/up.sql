-- Pay windows: every trade handed to a payer has a channel-side deadline, and lock fences come
-- from Postgres so they never go backwards whatever Redis does.

-- The moment the channel stops accepting payment for this trade (WeChat time_expire, Alipay
-- time_expire, UnionPay payTimeout), never later than the order's expiry. Until it has passed, a
-- trade whose parameters were handed out is payable unless its channel confirmed it closed.
ALTER TABLE payment_attempts ADD COLUMN pay_deadline timestamptz;
UPDATE payment_attempts a SET pay_deadline = o.expires_at FROM orders o WHERE o.id = a.order_id;
ALTER TABLE payment_attempts ALTER COLUMN pay_deadline SET NOT NULL;

-- Lock fencing tokens. A sequence is strictly increasing across replicas, Redis restarts and
-- failovers to a Redis whose clock is behind; it starts above every fence already written
-- (earlier fences were Redis time in microseconds).
CREATE SEQUENCE lock_fences AS bigint;
SELECT setval('lock_fences', greatest(
    (SELECT coalesce(max(fence), 0) FROM orders),
    (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) + 1);
