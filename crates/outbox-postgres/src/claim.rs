//! Where a claim has to look: the seq ranges between the messages this store already has in hand.
//!
//! A claim must skip the relay's held messages (in flight, or acknowledged and not yet deleted).
//! Filtering them row by row makes every claim walk past the whole ack window in the table: about
//! a microsecond per held row, several per claimed one. But the store knows more than the held
//! set: it also knows which seqs it deleted itself, and identity values are never reused. Every
//! seq in a run of consecutive held-or-deleted seqs can be skipped with an index range bound
//! instead, so the claim scans only the gaps between such runs: rows skipped earlier (a waiting
//! key, a message not yet due), rows of transactions that committed late, and everything after
//! the last run. Leaving a seq out of the runs is always safe (it is then checked row by row),
//! so the memory of deleted seqs is simply bounded.

use std::collections::BTreeSet;

/// More gaps than this and the claim filters held rows one by one instead: each gap costs an
/// index descent, and a scattered held set is rare (it takes many rolled-back enqueues).
pub(crate) const MAX_GAPS: usize = 16;

/// Deleted seqs remembered, newest first kept; older ones only cost a filtered row if they ever
/// matter again.
const REMEMBERED: usize = 16_384;

/// Seqs this store deleted from the outbox (completed or dead-lettered).
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    seqs: BTreeSet<i64>,
}

impl Deleted {
    /// Remembers `seqs` as gone for good.
    pub(crate) fn extend(&mut self, seqs: &[i64]) {
        self.seqs.extend(seqs.iter().copied());
        while self.seqs.len() > REMEMBERED {
            self.seqs.pop_first();
        }
    }

    /// The open intervals `(after, before)` a claim must scan, in seq order, given the seqs
    /// the relay holds; `None` when there would be more than [`MAX_GAPS`].
    pub(crate) fn gaps(&self, held: &[i64]) -> Option<Gaps> {
        // Only the held seqs need sorting: the deleted ones already are, and the two are
        // merged as they are walked. Deleted seqs below every held one are left out: they only
        // border index entries of deleted rows, which the store's vacuum removes.
        let mut held = held.to_vec();
        held.sort_unstable();
        let floor = held.first().copied().unwrap_or(i64::MIN);
        let mut known = Merged {
            a: held.into_iter().peekable(),
            b: self.seqs.range(floor..).copied().peekable(),
            last: None,
        }
        .peekable();
        let mut gaps = Gaps::default();
        let mut after = i64::MIN;
        while let Some(start) = known.next() {
            let mut end = start;
            while known.peek() == Some(&(end + 1)) {
                end += 1;
                known.next();
            }
            if gaps.after.len() == MAX_GAPS {
                return None;
            }
            gaps.after.push(after);
            gaps.before.push(start);
            after = end;
        }
        gaps.after.push(after);
        gaps.before.push(i64::MAX);
        Some(gaps)
    }
}

/// Two ascending sequences as one, ascending, without repeats.
struct Merged<A: Iterator<Item = i64>, B: Iterator<Item = i64>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
    last: Option<i64>,
}

impl<A: Iterator<Item = i64>, B: Iterator<Item = i64>> Iterator for Merged<A, B> {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        loop {
            let next = match (self.a.peek(), self.b.peek()) {
                (Some(&x), Some(&y)) if x <= y => self.a.next(),
                (Some(_), Some(_)) => self.b.next(),
                (Some(_), None) => self.a.next(),
                (None, _) => self.b.next(),
            }?;
            if self.last != Some(next) {
                self.last = Some(next);
                return Some(next);
            }
        }
    }
}

/// Open seq intervals, as the two array parameters of the claim statement.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Gaps {
    pub(crate) after: Vec<i64>,
    pub(crate) before: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(deleted: &[i64], held: &[i64]) -> Option<Vec<(i64, i64)>> {
        let mut d = Deleted::default();
        d.extend(deleted);
        d.gaps(held)
            .map(|g| g.after.into_iter().zip(g.before).collect())
    }

    #[test]
    fn nothing_known_scans_everything() {
        assert_eq!(gaps(&[], &[]), Some(vec![(i64::MIN, i64::MAX)]));
    }

    #[test]
    fn a_window_of_held_and_deleted_seqs_is_one_run() {
        // 1..=4 deleted, 5..=8 held except 6, deleted meanwhile.
        assert_eq!(
            gaps(&[1, 2, 3, 4, 6], &[5, 7, 8]),
            Some(vec![(i64::MIN, 5), (8, i64::MAX)])
        );
    }

    #[test]
    fn a_skipped_seq_stays_a_gap() {
        // 3 was skipped (waiting key, or committed late): it is scanned.
        assert_eq!(
            gaps(&[1, 2], &[4, 5]),
            Some(vec![(i64::MIN, 4), (5, i64::MAX)])
        );
        assert_eq!(
            gaps(&[4, 1], &[2, 5]),
            Some(vec![(i64::MIN, 2), (2, 4), (5, i64::MAX)])
        );
    }

    #[test]
    fn with_nothing_held_the_deleted_seqs_still_bound_the_scan() {
        assert_eq!(
            gaps(&[10, 11, 12], &[]),
            Some(vec![(i64::MIN, 10), (12, i64::MAX)])
        );
    }

    #[test]
    fn too_many_gaps_fall_back() {
        let held: Vec<i64> = (0..=i64::try_from(MAX_GAPS).unwrap())
            .map(|i| i * 2)
            .collect();
        assert_eq!(gaps(&[], &held), None);
        let held: Vec<i64> = (0..i64::try_from(MAX_GAPS).unwrap())
            .map(|i| i * 2)
            .collect();
        assert_eq!(gaps(&[], &held).map(|g| g.len()), Some(MAX_GAPS + 1));
    }

    #[test]
    fn held_seqs_in_any_order_and_repeated_merge_with_the_deleted_ones() {
        assert_eq!(
            gaps(&[3, 4, 9], &[8, 5, 5, 2, 10]),
            Some(vec![(i64::MIN, 2), (5, 8), (10, i64::MAX)])
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Deleted::default();
        let many: Vec<i64> = (0..40_000).collect();
        d.extend(&many);
        assert_eq!(d.seqs.len(), REMEMBERED);
        assert_eq!(d.seqs.first(), Some(&(40_000 - 16_384)));
    }
}
