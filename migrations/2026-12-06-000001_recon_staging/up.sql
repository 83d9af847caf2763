-- Staged statement lines are written once (COPY), read by hash joins after ANALYZE and deleted
-- whole: an index on them cost more to maintain while a day of 10^6 lines was staged than any
-- query gained from it (measured by reconbench: see docs/bench/reconciliation.md).
DROP INDEX recon_statement_lines_run;

-- The comparison's repair candidates (a statement success for a trade we know that is not
-- SUCCEEDED here, for the same amount), written by the comparison's own join so that the
-- repairs page through a few rows instead of joining the staged day again per page.
-- Unlogged scratch like the staged lines: dropped with the run's end, rebuilt by a re-run.
CREATE UNLOGGED TABLE recon_repair_queue (
    run_id             uuid    NOT NULL,
    out_trade_no       text    NOT NULL,
    channel_trade_no   text    NOT NULL,
    amount_minor       bigint  NOT NULL,
    currency           text    NOT NULL,
    at                 timestamptz,
    source_line        bigint  NOT NULL,
    local_amount_minor bigint  NOT NULL,
    PRIMARY KEY (run_id, out_trade_no)
);
