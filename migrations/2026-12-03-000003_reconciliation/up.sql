-- Reconciliation: each channel's statement for a Beijing day against our attempts and refunds.

CREATE TABLE recon_runs (
    id            uuid        PRIMARY KEY,
    channel       text        NOT NULL CHECK (channel IN ('WECHAT', 'ALIPAY', 'UNIONPAY')),
    -- The statement day in the platforms' time zone (Asia/Shanghai).
    day           date        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('RUNNING', 'COMPLETED', 'FAILED')),
    -- Who asked: an app id for RunReconciliation, 'scheduler' for the daily job.
    requested_by  text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    -- Last progress write (lines read); a RUNNING run whose heartbeat is old was abandoned by a
    -- replica that died and may be taken over.
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    lines_read    bigint      NOT NULL DEFAULT 0,
    -- Discrepancies this run recorded (new ones only: a re-run records nothing already known).
    discrepancies bigint      NOT NULL DEFAULT 0,
    repaired      bigint      NOT NULL DEFAULT 0,
    -- The statement's totals as the adapter reported them.
    payment_count bigint,
    refund_count  bigint,
    error         text
);
-- Exactly one run per channel and day at a time, across replicas.
CREATE UNIQUE INDEX recon_runs_one_running ON recon_runs (channel, day) WHERE status = 'RUNNING';
CREATE INDEX recon_runs_by_day ON recon_runs (channel, day, started_at DESC);

-- The statement being read, staged page by page so that the comparison is a set query in
-- Postgres and payd never holds a day in memory. Unlogged: it is scratch, rebuilt by a re-run.
CREATE UNLOGGED TABLE recon_statement_lines (
    run_id           uuid    NOT NULL,
    source_line      bigint  NOT NULL,
    -- 'PAYMENT' or 'REFUND'.
    kind             text    NOT NULL,
    out_trade_no     text    NOT NULL,
    out_refund_no    text    NOT NULL,
    channel_trade_no text    NOT NULL,
    -- channel.v1 TradeState / RefundState name.
    state            text    NOT NULL,
    amount_minor     bigint  NOT NULL,
    currency         text    NOT NULL,
    at               timestamptz
);
CREATE INDEX recon_statement_lines_run ON recon_statement_lines (run_id, kind, out_trade_no);

CREATE TABLE recon_discrepancies (
    id             uuid        PRIMARY KEY,
    -- The run that found it first.
    run_id         uuid        NOT NULL REFERENCES recon_runs (id),
    channel        text        NOT NULL,
    day            date        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN (
        'MISSING_LOCALLY', 'MISSING_AT_CHANNEL', 'AMOUNT_MISMATCH', 'STATUS_MISMATCH', 'DUPLICATE',
        'REFUND_MISSING_LOCALLY', 'REFUND_MISSING_AT_CHANNEL', 'REFUND_AMOUNT_MISMATCH',
        'REFUND_STATUS_MISMATCH')),
    out_trade_no   text        NOT NULL,
    -- '' for payments.
    out_refund_no  text        NOT NULL DEFAULT '',
    channel_amount_minor bigint,
    local_amount_minor   bigint,
    -- The statement line it was found on, when it was found on one.
    source_line    bigint,
    status         text        NOT NULL CHECK (status IN ('OPEN', 'REPAIRED', 'RESOLVED')),
    resolution     text,
    note           text,
    resolved_by    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz,
    -- Re-running a day records nothing new for what is already known (settled or not).
    CONSTRAINT recon_discrepancies_once UNIQUE (channel, day, kind, out_trade_no, out_refund_no)
);
CREATE INDEX recon_discrepancies_list ON recon_discrepancies (created_at, id);
CREATE INDEX recon_discrepancies_run ON recon_discrepancies (run_id);
CREATE INDEX recon_discrepancies_open ON recon_discrepancies (channel, day) WHERE status = 'OPEN';
-- Local successes of a day, by channel (the MISSING_AT_CHANNEL side).
CREATE INDEX payment_attempts_succeeded ON payment_attempts (channel, succeeded_at) WHERE status = 'SUCCEEDED';
CREATE INDEX refunds_succeeded ON refunds (channel, succeeded_at) WHERE status = 'SUCCEEDED';
