-- The least any payment platform must write (BENCH_AND_FAULTS.md), recreated before each baseline.
DROP TABLE IF EXISTS pay_outbox, pay_orders;
CREATE TABLE pay_orders (
  id bigserial PRIMARY KEY, merchant_id int NOT NULL, merchant_order_no text NOT NULL,
  amount bigint NOT NULL, status smallint NOT NULL DEFAULT 0, version int NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (merchant_id, merchant_order_no));
CREATE TABLE pay_outbox (
  id bigserial PRIMARY KEY, order_id bigint NOT NULL, event_type smallint NOT NULL,
  payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz);
CREATE INDEX pay_outbox_unsent ON pay_outbox (id) WHERE sent_at IS NULL;
