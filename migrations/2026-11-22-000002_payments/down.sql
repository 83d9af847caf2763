DROP TABLE duplicate_payments;
DROP TABLE channel_events;
DROP TABLE payment_attempts;
