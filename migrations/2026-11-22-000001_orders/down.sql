DROP TABLE idempotency_keys;
DROP TABLE order_transitions;
DROP TABLE orders;
