//! Poll plans: which read requests cover the registers a device needs.
//!
//! A device needs a set of *spans*: a point, or a point together with its
//! scale-factor point. A span is atomic (it must sit inside one read) because a
//! device may change a scale factor between two requests, and a value decoded
//! with the other request's scale factor is off by powers of ten.
//!
//! Spans are merged into reads of at most [`MAX_READ_WORDS`] registers, bridging
//! holes of up to `max_gap` words: a round trip costs far more than a few extra
//! words. Merging only happens inside one *group*, a range the device is known
//! to answer as a whole (a SunSpec chain, or one vendor map): bridging a hole
//! outside it could hit registers the device does not have and turn a good read
//! into an exception.

use super::MAX_READ_WORDS;
use crate::registers::Table;

/// Registers that must be read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Reads may bridge holes only between spans of the same group.
    pub group: u32,
    pub table: Table,
    pub start: u16,
    pub len: u16,
}

impl Span {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.len)
    }
}

/// One read request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub table: Table,
    pub addr: u16,
    pub len: u16,
}

impl Read {
    pub fn end(&self) -> u32 {
        u32::from(self.addr) + u32::from(self.len)
    }

    /// Whether the read covers registers `start..start+len` of `table`.
    pub fn covers(&self, table: Table, start: u16, len: u16) -> bool {
        self.table == table && start >= self.addr && u32::from(start) + u32::from(len) <= self.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("registers {start}..{end} must be read together but exceed {MAX_READ_WORDS} words")]
    SpanTooLong { start: u16, end: u32 },
    #[error("registers from {start} ({len} words) run past register 65535")]
    PastEnd { start: u16, len: u16 },
}

/// Default hole a read may bridge, in words.
pub const DEFAULT_MAX_GAP: u16 = 32;

/// Merges `spans` into as few reads as a greedy left-to-right pass finds:
/// every span lies wholly inside one read, no read exceeds 125 words, and
/// holes bridged are at most `max_gap` words and inside one group.
pub fn plan(spans: &[Span], max_gap: u16) -> Result<Vec<Read>, PlanError> {
    let mut sorted: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if s.len == 0 {
            continue;
        }
        if s.len > MAX_READ_WORDS {
            return Err(PlanError::SpanTooLong {
                start: s.start,
                end: s.end(),
            });
        }
        if s.end() > 0x1_0000 {
            return Err(PlanError::PastEnd {
                start: s.start,
                len: s.len,
            });
        }
        sorted.push(*s);
    }
    let table_rank = |t: Table| match t {
        Table::Holding => 0u8,
        Table::Input => 1,
    };
    sorted.sort_by_key(|s| (s.group, table_rank(s.table), s.start, s.len));
    let mut reads: Vec<Read> = Vec::new();
    let mut current: Option<(u32, Read)> = None;
    for s in sorted {
        if let Some((group, r)) = current.as_mut() {
            let same = *group == s.group && r.table == s.table;
            let reachable = u32::from(s.start) <= r.end() + u32::from(max_gap);
            let new_end = r.end().max(s.end());
            if same && reachable && new_end - u32::from(r.addr) <= u32::from(MAX_READ_WORDS) {
                r.len = (new_end - u32::from(r.addr)) as u16;
                continue;
            }
            reads.push(*r);
        }
        current = Some((
            s.group,
            Read {
                table: s.table,
                addr: s.start,
                len: s.len,
            },
        ));
    }
    if let Some((_, r)) = current {
        reads.push(r);
    }
    Ok(reads)
}

/// Copies registers `start..start+len` of `table` out of executed reads
/// (`reads[i]` answered by `words[i]`) into `dst`, word by word; words no read
/// covers are left as they are.
pub fn gather(reads: &[Read], words: &[Vec<u16>], table: Table, start: u16, dst: &mut [u16]) {
    for (r, w) in reads.iter().zip(words) {
        if r.table != table {
            continue;
        }
        let lo = u32::from(start).max(u32::from(r.addr));
        let hi = (u32::from(start) + dst.len() as u32).min(r.end());
        for a in lo..hi {
            if let Some(v) = w.get((a - u32::from(r.addr)) as usize) {
                dst[(a - u32::from(start)) as usize] = *v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(group: u32, start: u16, len: u16) -> Span {
        Span {
            group,
            table: Table::Holding,
            start,
            len,
        }
    }

    #[test]
    fn neighbours_merge_and_far_points_do_not() {
        let reads = plan(&[span(0, 100, 2), span(0, 110, 1), span(0, 400, 4)], 16).unwrap();
        assert_eq!(
            reads,
            vec![
                Read {
                    table: Table::Holding,
                    addr: 100,
                    len: 11
                },
                Read {
                    table: Table::Holding,
                    addr: 400,
                    len: 4
                }
            ]
        );
    }

    #[test]
    fn groups_and_tables_never_merge() {
        let mut input = span(0, 12, 2);
        input.table = Table::Input;
        let reads = plan(&[span(0, 10, 2), span(1, 12, 2), input], 16).unwrap();
        assert_eq!(reads.len(), 3);
    }

    #[test]
    fn a_read_never_exceeds_125_words() {
        let reads = plan(&[span(0, 0, 100), span(0, 100, 100)], 16).unwrap();
        assert_eq!(reads.len(), 2);
        assert!(reads.iter().all(|r| r.len <= MAX_READ_WORDS));
    }

    #[test]
    fn an_oversized_span_is_refused() {
        assert!(matches!(
            plan(&[span(0, 0, 126)], 16),
            Err(PlanError::SpanTooLong { .. })
        ));
        assert!(matches!(
            plan(&[span(0, 65535, 2)], 16),
            Err(PlanError::PastEnd { .. })
        ));
    }

    #[test]
    fn gather_reassembles_a_block_from_several_reads() {
        let reads = vec![
            Read {
                table: Table::Holding,
                addr: 10,
                len: 3,
            },
            Read {
                table: Table::Holding,
                addr: 20,
                len: 2,
            },
        ];
        let words = vec![vec![1, 2, 3], vec![7, 8]];
        let mut dst = vec![0u16; 12];
        gather(&reads, &words, Table::Holding, 11, &mut dst);
        assert_eq!(dst, vec![2, 3, 0, 0, 0, 0, 0, 0, 0, 7, 8, 0]);
    }

    proptest! {
        #[test]
        fn every_span_inside_one_read_no_read_too_long(
            raw in proptest::collection::vec((0u32..3, 0u16..2000, 1u16..=125, any::<bool>()), 0..60),
            gap in 0u16..64,
        ) {
            let spans: Vec<Span> = raw
                .iter()
                .map(|&(group, start, len, input)| Span {
                    group,
                    table: if input { Table::Input } else { Table::Holding },
                    // Groups are disjoint address ranges, as on a real device.
                    start: group as u16 * 2200 + start,
                    len,
                })
                .collect();
            let reads = plan(&spans, gap).unwrap();
            for r in &reads {
                prop_assert!(r.len >= 1 && r.len <= MAX_READ_WORDS);
            }
            // Atomic: a span (a value with its scale factor) sits in a single read.
            for s in &spans {
                prop_assert!(
                    reads.iter().any(|r| r.covers(s.table, s.start, s.len)),
                    "span {:?} not inside one read of {:?}", s, reads
                );
            }
            // Reads cover only needed registers and bridged holes inside one group,
            // never more than `gap` words away from a needed register.
            for r in &reads {
                for a in u32::from(r.addr)..r.end() {
                    let near = spans.iter().any(|s| {
                        s.table == r.table
                            && u32::from(s.start) <= a + u32::from(gap)
                            && a < s.end() + u32::from(gap)
                    });
                    prop_assert!(near, "register {} of {:?} is far from any span", a, r);
                }
                let groups: std::collections::BTreeSet<u32> = spans
                    .iter()
                    .filter(|s| s.table == r.table && r.covers(s.table, s.start, s.len))
                    .map(|s| s.group)
                    .collect();
                prop_assert!(groups.len() <= 1, "read {:?} mixes groups {:?}", r, groups);
            }
            // Merging never produces more reads than spans.
            prop_assert!(reads.len() <= spans.len());
        }
    }
}
