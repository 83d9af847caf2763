DROP TABLE recon_repair_queue;
CREATE INDEX recon_statement_lines_run ON recon_statement_lines (run_id, kind, out_trade_no);
