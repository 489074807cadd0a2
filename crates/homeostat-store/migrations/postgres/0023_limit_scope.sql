-- Whether a limit's keys are each tenant's own (`tenant`) or shared by every
-- tenant (`shared`). Limits set before scopes existed were shared and stay
-- so; a limit set from now on is the tenant's own unless it says otherwise
-- (the API's default). A tenant's own key is stored as the tenant's id, the
-- unit separator (U+001F) and the key: keys may not hold control
-- characters, so no key a job names can be mistaken for another tenant's.
ALTER TABLE limits ADD COLUMN scope TEXT NOT NULL DEFAULT 'shared';
