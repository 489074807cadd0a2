-- The W3C trace context a job was enqueued with, handed to the agent that
-- claims it (an added, nullable column: docs/upgrade.md).
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
