-- What the HTTP API needs: enqueue answers kept by idempotency key (a
-- client that lost the reply retries and gets the first answer), and a
-- job's audit history read by subject.
CREATE TABLE idempotency_keys (
    tenant_id   UUID NOT NULL,
    key         TEXT NOT NULL,
    response    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE INDEX audit_events_subject ON audit_events (subject, seq);
-- Each failed attempt (number, agent, start, failure, error), appended when
-- it fails; the success path writes nothing here.
ALTER TABLE jobs ADD COLUMN attempts TEXT;
