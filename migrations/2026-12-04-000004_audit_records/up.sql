-- The audit log: one row per state-changing call (and per operator action), written in the
-- transaction of the change, or on its own when the call was refused or changed nothing.
-- Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE for every role, the owner included.
CREATE TABLE audit_records (
    id            bigserial   PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    -- Who: the calling app, the person it names (refund operator, payctl --operator), or the
    -- adapter (its channel) for ChannelEvents.
    actor_kind    text        NOT NULL CHECK (actor_kind IN ('APP', 'ADAPTER', 'OPERATOR', 'SYSTEM')),
    app_id        text,
    operator      text,
    adapter       text,
    -- What: the full gRPC method name, or a payctl action.
    action        text        NOT NULL,
    -- OK (changed), REPLAYED (an idempotent repeat: nothing changed), REFUSED (a client-side
    -- refusal: the gRPC code says which) or FAILED (a dependency or bug: nothing known changed).
    outcome       text        NOT NULL CHECK (outcome IN ('OK', 'REPLAYED', 'REFUSED', 'FAILED')),
    code          text        NOT NULL,
    request_id    text        NOT NULL,
    order_id      uuid,
    out_trade_no  text,
    refund_id     uuid,
    recon_run_id  uuid,
    -- Any other target (a discrepancy id, a channel event id, a refund_request_no…).
    target        text
);
CREATE INDEX audit_records_at ON audit_records (at DESC, id DESC);
CREATE INDEX audit_records_app_at ON audit_records (app_id, at DESC, id DESC);
CREATE INDEX audit_records_order ON audit_records (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX audit_records_refund ON audit_records (refund_id) WHERE refund_id IS NOT NULL;
CREATE INDEX audit_records_run ON audit_records (recon_run_id) WHERE recon_run_id IS NOT NULL;
CREATE INDEX audit_records_trade ON audit_records (out_trade_no) WHERE out_trade_no IS NOT NULL;

CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_records is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_records_no_update_delete BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();
