-- The lifecycle's common steps are each one statement: a WITH query whose data-modifying parts
-- (order, attempt, outbox, inbox, audit) commit together as the statement's own transaction,
-- with no BEGIN and COMMIT round trips (G7). Each part is guarded by what the writer read
-- (status, version, fence); when a later part matches no row after an earlier one wrote, the
-- statement must change nothing, and the writer then takes the multi-statement path that
-- diagnoses why. This function is that "nothing": it raises (SQLSTATE PD001), which rolls the
-- whole statement back.
CREATE FUNCTION payd_require(ok boolean, what text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'single-statement write refused: %', what USING ERRCODE = 'PD001';
    END IF;
    RETURN true;
END
$$;

-- A lock's fencing token, as a function so that the first statement of a locked section can
-- draw it in the same round trip as its first read (diesel's DSL can call a function, not
-- nextval on a sequence name).
CREATE FUNCTION payd_mint_fence() RETURNS bigint
    LANGUAGE sql VOLATILE AS $$ SELECT nextval('lock_fences') $$;
