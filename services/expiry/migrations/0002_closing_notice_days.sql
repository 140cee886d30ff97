-- The days before redemption closes when holders of points get `program_closing`, per
-- program (lifecycle.closing_notice_days; 30 and 7 unless the program says otherwise).
ALTER TABLE programs ADD COLUMN closing_notice_days int[] NOT NULL DEFAULT '{30,7}';
