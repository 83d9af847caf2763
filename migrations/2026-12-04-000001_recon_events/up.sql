-- Outbox events that belong to no order (reconciliation runs, discrepancies of trades we do not
-- know), and the expected size of a reconciliation run for progress bars.
--
-- An event names either an order (ordered by orders.event_seq, as before) or a stream key
-- (ordered by outbox_streams.event_seq, taken the same way: an UPDATE that holds the key's row
-- lock until commit). `ordering_key` is whichever of the two it has; push delivery keeps each
-- ordering key's events in sequence exactly as it kept each order's.

ALTER TABLE outbox_events ALTER COLUMN order_id DROP NOT NULL;
ALTER TABLE outbox_events ADD COLUMN stream_key text;
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_one_key
    CHECK ((order_id IS NULL) <> (stream_key IS NULL));
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_stream_seq_once UNIQUE (stream_key, order_seq);
ALTER TABLE outbox_events ADD COLUMN ordering_key text
    GENERATED ALWAYS AS (coalesce(order_id::text, stream_key)) STORED;
DROP INDEX outbox_order_pending;
CREATE INDEX outbox_key_pending ON outbox_events (ordering_key, order_seq) WHERE delivery = 'PENDING';

CREATE TABLE outbox_streams (
    stream_key text   PRIMARY KEY,
    event_seq  bigint NOT NULL
);

-- What a run expects to read: the day's local successes (attempts and refunds), known when it
-- starts; the statement's own count is known only at its end.
ALTER TABLE recon_runs ADD COLUMN expected_lines bigint NOT NULL DEFAULT 0;
