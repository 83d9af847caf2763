-- Every change of an order's version is a transition of the one state machine, and is written
-- to order_transitions by the database itself, in the same statement: one round trip less per
-- transition (G7), and no code path can move an order without leaving its row.
--
-- The writer names the reason in `transition_reason`, a column that is only ever a parameter:
-- the trigger reads it, records the transition and clears it, so it is NULL at rest and an
-- UPDATE that bumps the version without naming a reason fails.
ALTER TABLE orders ADD COLUMN transition_reason text;

CREATE FUNCTION orders_record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO order_transitions (order_id, version, from_status, to_status, reason)
        VALUES (NEW.id, NEW.version, NULL, NEW.status, coalesce(NEW.transition_reason, 'created'));
        RETURN NULL;
    END IF;
    IF NEW.version IS DISTINCT FROM OLD.version THEN
        IF NEW.transition_reason IS NULL THEN
            RAISE EXCEPTION 'order % moved from version % to % without a transition reason',
                NEW.id, OLD.version, NEW.version
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO order_transitions (order_id, version, from_status, to_status, reason)
        VALUES (NEW.id, NEW.version, OLD.status, NEW.status, NEW.transition_reason);
    END IF;
    NEW.transition_reason := NULL;
    RETURN NEW;
END
$$;

-- BEFORE UPDATE: the reason is cleared in the row being written. AFTER INSERT: the order row
-- must exist for the transition's foreign key; its reason column is cleared by the insert
-- itself (the writer leaves it NULL, or the trigger's default names it 'created').
CREATE TRIGGER orders_transition_on_update BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_record_transition();
CREATE TRIGGER orders_transition_on_insert AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_record_transition();
