-- Issue 15, abuse by signed-up users: invitations that can be revoked (and are, when their
-- inviter loses the right to invite), Stripe events applied in the order Stripe created
-- them, and template downloads counted once per user.

ALTER TABLE invitations ADD COLUMN revoked_at BIGINT;
CREATE INDEX IF NOT EXISTS invitations_by_inviter ON invitations (invited_by);

-- The `created` time (Unix seconds) of the last subscription event applied to the user: an
-- older event delivered late changes nothing.
ALTER TABLE users ADD COLUMN subscription_event_at BIGINT;

CREATE TABLE IF NOT EXISTS template_downloads (
    template_id TEXT NOT NULL REFERENCES block_templates (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    downloaded_at BIGINT NOT NULL,
    PRIMARY KEY (template_id, user_id)
);
