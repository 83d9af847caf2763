-- Cost against stored data: :n orders already PAID (with their transitions), as months of traffic
-- leave them, bulk-inserted so the tables and their indexes are as large as that traffic would make.
INSERT INTO orders (id, app_id, merchant_order_no, amount_minor, currency, subject, status,
                    paid_minor, version, expires_at, created_at, updated_at)
SELECT gen_random_uuid(), 'shop-1', 'prefill-' || :'tag' || '-' || g, 100 + g % 10000, 'CNY',
       'prefill', 'PAID', 100 + g % 10000, 2, now() - interval '1 day',
       now() - interval '2 days' + g * interval '1 millisecond', now() - interval '1 day'
FROM generate_series(1, :n) g;
VACUUM ANALYZE orders;
