//! Where a claim has to look: the seq ranges between the messages this store already has in hand.
//!
//! A claim must skip the relay's held messages (in flight, or acknowledged and not yet deleted).
//! Filtering them row by row makes every claim walk past the whole ack window in the table: about
//! a microsecond per held row, several per claimed one. But the store knows more than the held
//! set: it also knows which seqs it deleted itself, and identity values are never reused. Every
//! seq in a run of consecutive held-or-deleted seqs can be skipped with an index range bound
//! instead, so the claim scans only the gaps between such runs: rows skipped earlier (a waiting
//! key, a message not yet due), seqs of transactions that rolled back or committed late, and
//! everything after the last run. Deleted rows leave index entries behind until a vacuum; a scan
//! that walks them pays a heap visit for each one not yet marked dead, so skipping every deleted
//! seq, not only those above the held ones, is what keeps a claim's cost independent of how much
//! was published since the last vacuum. Leaving a seq out of the runs is always safe (it is then
//! checked row by row), so the memory of deleted seqs is simply bounded.

use std::collections::BTreeMap;

/// More gaps than this and the claim filters held rows one by one instead: each gap costs an
/// index descent, and a scattered held set is rare (it takes many rolled-back enqueues).
pub(crate) const MAX_GAPS: usize = 16;

/// Runs of deleted seqs remembered; the lowest are forgotten first. Acknowledgements arrive out
/// of order, so the deleted seqs are broken into runs by the held ones between them (up to the
/// ack window) and by seqs that were skipped (rolled back, waiting, not yet committed): this
/// must stay well above the largest ack window, or the runs that border held seqs are
/// forgotten and the claim falls back to filtering. About 50 bytes each.
const REMEMBERED_RUNS: usize = 16_384;

/// Seqs this store deleted from the outbox (completed), as runs of consecutive seqs.
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    /// First seq of a run → last seq of it; runs are disjoint and never adjacent.
    runs: BTreeMap<i64, i64>,
}

impl Deleted {
    /// Remembers `seqs` as gone for good.
    pub(crate) fn extend(&mut self, seqs: &[i64]) {
        for &seq in seqs {
            self.insert(seq);
        }
        while self.runs.len() > REMEMBERED_RUNS {
            self.runs.pop_first();
        }
    }

    fn insert(&mut self, seq: i64) {
        let below = self.runs.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, end)) = below
            && seq <= end
        {
            return;
        }
        let joins_below = below.filter(|&(_, end)| end.checked_add(1) == Some(seq));
        let above = seq
            .checked_add(1)
            .and_then(|next| self.runs.get(&next).map(|&end| (next, end)));
        match (joins_below, above) {
            (Some((start, _)), Some((next, end))) => {
                self.runs.remove(&next);
                self.runs.insert(start, end);
            }
            (Some((start, _)), None) => {
                self.runs.insert(start, seq);
            }
            (None, Some((next, end))) => {
                self.runs.remove(&next);
                self.runs.insert(seq, end);
            }
            (None, None) => {
                self.runs.insert(seq, seq);
            }
        }
    }

    /// The open intervals `(after, before)` a claim must scan, in seq order, given the seqs
    /// the relay holds; `None` when there would be more than [`MAX_GAPS`].
    pub(crate) fn gaps(&self, held: &[i64]) -> Option<Gaps> {
        let mut held = held.to_vec();
        held.sort_unstable();
        held.dedup();
        // Held seqs and deleted runs merged into runs of known seqs, ascending; each notes
        // whether it holds a held seq.
        let mut known: Vec<(i64, i64, bool)> = Vec::new();
        let mut push = |start: i64, end: i64, is_held: bool| match known.last_mut() {
            Some(last) if last.1.checked_add(1).is_some_and(|next| start <= next) => {
                last.1 = last.1.max(end);
                last.2 |= is_held;
            }
            _ => known.push((start, end, is_held)),
        };
        let mut runs = self.runs.iter().map(|(&s, &e)| (s, e)).peekable();
        let mut seqs = held.iter().copied().peekable();
        loop {
            match (runs.peek().copied(), seqs.peek().copied()) {
                (Some((start, end)), Some(seq)) if start <= seq => {
                    runs.next();
                    push(start, end, false);
                }
                (_, Some(seq)) => {
                    seqs.next();
                    push(seq, seq, true);
                }
                (Some((start, end)), None) => {
                    runs.next();
                    push(start, end, false);
                }
                (None, None) => break,
            }
        }
        // Too many runs: the lowest runs of deleted seqs only may go (their seqs are then
        // scanned); a run with a held seq may not, or the claim would return it again.
        let mut first = 0;
        while known.len() - first > MAX_GAPS && !known[first].2 {
            first += 1;
        }
        if known.len() - first > MAX_GAPS {
            return None;
        }
        let mut gaps = Gaps::default();
        let mut after = i64::MIN;
        for &(start, end, _) in &known[first..] {
            gaps.after.push(after);
            gaps.before.push(start);
            after = end;
        }
        gaps.after.push(after);
        gaps.before.push(i64::MAX);
        Some(gaps)
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
            Some(vec![(i64::MIN, 1), (8, i64::MAX)])
        );
    }

    #[test]
    fn a_skipped_seq_stays_a_gap() {
        // 3 was skipped (waiting key, or committed late): it is scanned.
        assert_eq!(
            gaps(&[1, 2], &[4, 5]),
            Some(vec![(i64::MIN, 1), (2, 4), (5, i64::MAX)])
        );
        assert_eq!(
            gaps(&[4, 1], &[2, 5]),
            Some(vec![(i64::MIN, 1), (2, 4), (5, i64::MAX)])
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
    fn deleted_seqs_below_the_held_ones_are_skipped_too() {
        // Everything published so far is one run: the scan starts at the first deleted seq,
        // past the index entries the deletes left behind.
        let deleted: Vec<i64> = (1..=100_000).collect();
        let held: Vec<i64> = (100_001..=101_024).collect();
        assert_eq!(
            gaps(&deleted, &held),
            Some(vec![(i64::MIN, 1), (101_024, i64::MAX)])
        );
    }

    #[test]
    fn too_many_gaps_forget_the_lowest_deleted_runs_first() {
        // 20 runs of deleted seqs with holes between them, then one held seq.
        let deleted: Vec<i64> = (0..20).map(|i| i * 10).collect();
        let got = gaps(&deleted, &[1_000]).unwrap();
        assert_eq!(got.len(), MAX_GAPS + 1);
        assert_eq!(got.first(), Some(&(i64::MIN, 50)));
        assert_eq!(got.last(), Some(&(1_000, i64::MAX)));
        // A run holding a held seq is never forgotten: that seq would be claimed again.
        let held: Vec<i64> = (0..20).map(|i| i * 10 + 5).collect();
        assert_eq!(gaps(&deleted, &held), None);
    }

    #[test]
    fn runs_merge_whatever_the_order() {
        let mut d = Deleted::default();
        d.extend(&[5, 3, 4, 1, 9, 2, 8, 7, 6, 4]);
        assert_eq!(d.runs.into_iter().collect::<Vec<_>>(), vec![(1, 9)]);
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Deleted::default();
        let contiguous: Vec<i64> = (0..40_000).collect();
        d.extend(&contiguous);
        assert_eq!(d.runs.len(), 1);
        let scattered: Vec<i64> = (0..20_000).map(|i| 100_000 + i * 2).collect();
        d.extend(&scattered);
        assert_eq!(d.runs.len(), REMEMBERED_RUNS);
        assert_eq!(d.runs.last_key_value(), Some((&139_998, &139_998)));
    }
}
