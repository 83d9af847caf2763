DROP TRIGGER orders_transition_on_insert ON orders;
DROP TRIGGER orders_transition_on_update ON orders;
DROP FUNCTION orders_record_transition();
ALTER TABLE orders DROP COLUMN transition_reason;
