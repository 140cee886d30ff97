-- Every ledger movement updates its member's row (balance, last activity). `members_holding`
-- named `balance` in its predicate, so none of those updates could be HOT: each wrote a new
-- entry in every index. The query it served (members of a closing program still holding
-- points) finds them by the primary key's `program_id` prefix just as well. Free space on
-- each page lets the new row versions stay on their page.
DROP INDEX members_holding;
ALTER TABLE members SET (fillfactor = 85);
