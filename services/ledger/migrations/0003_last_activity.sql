-- When the member last earned or spent (by the movement's own time): an inactivity expiry
-- computed before that instant is refused, because the activity pushed the date out.
ALTER TABLE accounts ADD COLUMN last_activity_at timestamptz;
