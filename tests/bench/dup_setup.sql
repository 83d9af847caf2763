-- B_dup: 20,000 orders already paid, so the conditional update matches no row.
INSERT INTO pay_orders (merchant_id, merchant_order_no, amount, status, version)
SELECT g % 1000 + 1, 'dup-' || g, 100, 2, 1 FROM generate_series(1, 20000) g;
VACUUM ANALYZE pay_orders;
