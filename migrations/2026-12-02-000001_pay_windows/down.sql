DROP SEQUENCE lock_fences;
ALTER TABLE payment_attempts DROP COLUMN pay_deadline;
