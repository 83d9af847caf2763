DROP INDEX IF EXISTS refunds_succeeded;
DROP INDEX IF EXISTS payment_attempts_succeeded;
DROP TABLE recon_discrepancies;
DROP TABLE recon_statement_lines;
DROP TABLE recon_runs;
