//! The grow-only counter (G-Counter) at the heart of tally.
//!
//! A counter holds one component per *replica*; a replica is one node id
//! together with the incarnation of that node's data folder (see
//! [`ReplicaId`]). A replica only ever adds to its own component, and merging
//! two counters takes the maximum of each component, so merge is commutative,
//! associative and idempotent and no increment is lost however replicas
//! exchange state. The value is the exact sum of the components, as a `u128`.
//!
//! Merging *totals* by maximum (instead of per component) loses concurrent
//! increments; that is the one mistake this module exists to make impossible.
//!
//! This module does no I/O. Encoding to bytes lives here too so the storage
//! layer and the wire share one compact, versionable format.

use serde::{Deserialize, Serialize};

/// Who owns a component: a node id plus the incarnation of its data folder.
///
/// The incarnation is a random number drawn when a data folder is created, so
/// a node whose folder was lost starts a fresh component instead of counting
/// again from a value its peers have already seen (SPEC G7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    pub node: u64,
    pub incarnation: u64,
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:016x}", self.node, self.incarnation)
    }
}

/// One grow-only counter.
///
/// Its components are a slice sorted by replica, with no zero counts: a
/// counter has one to a few components, and a node holds every counter in
/// memory, so a map's node per counter would cost several times the data.
/// A boxed slice rather than a vector: it has no room it does not use, and
/// it is 16 bytes in each map entry instead of 24 (B6: RSS per name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GCounter {
    components: Box<[(ReplicaId, u64)]>,
}

/// Returned when an increment would overflow the replica's own `u64` component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("increment by {amount} would overflow this node's component ({current})")]
pub struct Overflow {
    pub current: u64,
    pub amount: u64,
}

/// Returned when bytes do not decode to a counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed counter encoding: {0}")]
pub struct DecodeError(&'static str);

/// Bytes of one encoded component.
pub const ENTRY_LEN: usize = 24;

impl GCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The exact sum of all components.
    pub fn value(&self) -> u128 {
        self.components.iter().map(|&(_, c)| u128::from(c)).sum()
    }

    pub fn get(&self, replica: ReplicaId) -> u64 {
        self.find(replica).map_or(0, |i| self.components[i].1)
    }

    fn find(&self, replica: ReplicaId) -> Result<usize, usize> {
        self.components.binary_search_by_key(&replica, |&(r, _)| r)
    }

    /// Sets `replica`'s component to `count`, keeping the order.
    fn set(&mut self, replica: ReplicaId, count: u64) {
        match self.find(replica) {
            Ok(i) => self.components[i].1 = count,
            Err(i) => {
                // Exactly one more (a vector would grow to room for four).
                let mut v = std::mem::take(&mut self.components).into_vec();
                v.reserve_exact(1);
                v.insert(i, (replica, count));
                self.components = v.into_boxed_slice();
            }
        }
    }

    pub fn components(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.components.iter().map(|(r, c)| (*r, *c))
    }

    pub fn is_empty(&self) -> bool {
        self.components.is_empty()
    }

    /// How many components (replicas with a count above zero).
    pub fn len(&self) -> usize {
        self.components.len()
    }

    /// A counter with one component.
    pub fn of(replica: ReplicaId, count: u64) -> GCounter {
        GCounter {
            components: if count > 0 {
                Box::new([(replica, count)])
            } else {
                Box::default()
            },
        }
    }

    /// Checks an increment of `replica`'s component without applying it.
    pub fn check_increment(&self, replica: ReplicaId, amount: u64) -> Result<u64, Overflow> {
        let current = self.get(replica);
        current
            .checked_add(amount)
            .ok_or(Overflow { current, amount })
    }

    /// Adds `amount` to `replica`'s component; refuses (and changes nothing) on overflow.
    pub fn increment(&mut self, replica: ReplicaId, amount: u64) -> Result<(), Overflow> {
        let next = self.check_increment(replica, amount)?;
        if amount > 0 {
            self.set(replica, next);
        }
        Ok(())
    }

    /// Pointwise maximum. Returns whether `self` changed.
    ///
    /// Linear in the two counters' sizes: both are sorted by replica, so
    /// they are walked together (a counter from a peer may be large, and
    /// inserting its components one at a time would be quadratic).
    pub fn merge(&mut self, other: &GCounter) -> bool {
        if !self.would_change(other) {
            return false;
        }
        let mine = std::mem::take(&mut self.components);
        let theirs = &other.components;
        // Sized to the union, not the sum, so that boxing it does not
        // copy it again.
        let mut out = Vec::with_capacity(union_len(&mine, theirs));
        let (mut i, mut j) = (0, 0);
        while i < mine.len() && j < theirs.len() {
            let ((ra, ca), (rb, cb)) = (mine[i], theirs[j]);
            match ra.cmp(&rb) {
                std::cmp::Ordering::Less => {
                    out.push((ra, ca));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push((rb, cb));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push((ra, ca.max(cb)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&mine[i..]);
        out.extend_from_slice(&theirs[j..]);
        // A zero count is never an entry: one from a peer is dropped here.
        out.retain(|&(_, c)| c > 0);
        self.components = out.into_boxed_slice();
        true
    }

    /// Whether merging `other` into `self` would change `self`.
    /// Linear, like [`GCounter::merge`].
    pub fn would_change(&self, other: &GCounter) -> bool {
        let mut mine = self.components.iter().peekable();
        other.components.iter().any(|&(r, c)| {
            while mine.next_if(|&&(m, _)| m < r).is_some() {}
            match mine.peek() {
                Some(&&(m, have)) if m == r => c > have,
                _ => c > 0,
            }
        })
    }

    /// Compact encoding: a sequence of (node, incarnation, count), each a
    /// little-endian u64, sorted by replica.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.components.len() * ENTRY_LEN);
        for (r, c) in &self.components {
            out.extend_from_slice(&r.node.to_le_bytes());
            out.extend_from_slice(&r.incarnation.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if !bytes.len().is_multiple_of(ENTRY_LEN) {
            return Err(DecodeError("length is not a whole number of entries"));
        }
        let word = |chunk: &[u8], i: usize| {
            u64::from_le_bytes(chunk[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        };
        let mut components: Vec<(ReplicaId, u64)> = bytes
            .chunks_exact(ENTRY_LEN)
            .map(|chunk| {
                let replica = ReplicaId {
                    node: word(chunk, 0),
                    incarnation: word(chunk, 1),
                };
                (replica, word(chunk, 2))
            })
            .collect();
        components.sort_unstable_by_key(|&(r, _)| r);
        if components.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(DecodeError("duplicate replica"));
        }
        // A zero count is the default, never an entry.
        components.retain(|&(_, c)| c > 0);
        Ok(Self {
            components: components.into_boxed_slice(),
        })
    }
}

/// How many replicas two sorted component lists hold between them.
fn union_len(a: &[(ReplicaId, u64)], b: &[(ReplicaId, u64)]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (ra, rb) = (a[i].0, b[j].0);
        i += usize::from(ra <= rb);
        j += usize::from(rb <= ra);
        n += 1;
    }
    n + (a.len() - i) + (b.len() - j)
}

/// The wire form of a counter: a list of components.
pub use tally_client::types::Component;

impl From<&GCounter> for Vec<Component> {
    fn from(c: &GCounter) -> Self {
        c.components()
            .map(|(r, count)| Component {
                node: r.node,
                incarnation: r.incarnation,
                count,
            })
            .collect()
    }
}

impl FromIterator<Component> for GCounter {
    /// Builds a counter from wire components; a replica listed twice keeps
    /// its maximum, and zero counts are dropped (they are the default).
    fn from_iter<I: IntoIterator<Item = Component>>(iter: I) -> Self {
        // Sorted once, then the duplicates folded: n log n, however the
        // sender ordered them.
        let mut components: Vec<(ReplicaId, u64)> = iter
            .into_iter()
            .filter(|c| c.count > 0)
            .map(|c| {
                let replica = ReplicaId {
                    node: c.node,
                    incarnation: c.incarnation,
                };
                (replica, c.count)
            })
            .collect();
        components.sort_unstable();
        // Sorted by replica then count: the last of each replica is its maximum.
        components.reverse();
        components.dedup_by_key(|&mut (r, _)| r);
        components.reverse();
        GCounter {
            components: components.into_boxed_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rid(node: u64) -> ReplicaId {
        ReplicaId {
            node,
            incarnation: 7,
        }
    }

    fn arb_counter() -> impl Strategy<Value = GCounter> {
        // Counts start at 1: a zero component is never stored (it is the default).
        prop::collection::btree_map((0u64..4, 0u64..3), 1u64..1_000, 0..6).prop_map(|m| GCounter {
            components: m
                .into_iter()
                .map(|((node, incarnation), c)| (ReplicaId { node, incarnation }, c))
                .collect(),
        })
    }

    fn merged(a: &GCounter, b: &GCounter) -> GCounter {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_counter(), b in arb_counter()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_counter(), b in arb_counter(), c in arb_counter()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_counter(), b in arb_counter()) {
            let once = merged(&a, &b);
            prop_assert_eq!(merged(&once, &b), once.clone());
            prop_assert_eq!(merged(&a, &a), a);
        }

        #[test]
        fn merge_takes_the_maximum_of_each_component(a in arb_counter(), b in arb_counter()) {
            // The model: a map from replica to count, merged entry by entry.
            let mut model = std::collections::BTreeMap::new();
            for (r, c) in a.components().chain(b.components()) {
                let e = model.entry(r).or_insert(0);
                *e = c.max(*e);
            }
            let m = merged(&a, &b);
            prop_assert_eq!(m.components().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn building_from_wire_components_keeps_each_maximum(
            parts in prop::collection::vec((0u64..4, 0u64..3, 0u64..1_000), 0..20)
        ) {
            let mut model = std::collections::BTreeMap::new();
            for &(node, incarnation, count) in &parts {
                if count > 0 {
                    let e = model.entry(ReplicaId { node, incarnation }).or_insert(0);
                    *e = count.max(*e);
                }
            }
            let built: GCounter = parts
                .iter()
                .map(|&(node, incarnation, count)| Component { node, incarnation, count })
                .collect();
            prop_assert_eq!(built.components().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn merge_never_lowers_the_value(a in arb_counter(), b in arb_counter()) {
            let m = merged(&a, &b);
            prop_assert!(m.value() >= a.value());
            prop_assert!(m.value() >= b.value());
            prop_assert_eq!(a.would_change(&b), m != a);
        }

        #[test]
        fn encoding_round_trips(a in arb_counter()) {
            prop_assert_eq!(GCounter::decode(&a.encode()).unwrap(), a);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = GCounter::decode(&bytes);
        }

        /// Three replicas each apply their own increments and exchange state
        /// in an arbitrary order; after a final full exchange every replica's
        /// value is exactly the sum of all increments, and at every point no
        /// replica's value exceeded what had been sent.
        #[test]
        fn no_increment_is_lost_under_any_interleaving(
            steps in prop::collection::vec((0usize..3, 0usize..3, 0u64..100, any::<bool>()), 0..60)
        ) {
            let mut replicas = vec![GCounter::new(); 3];
            let mut sent: u128 = 0;
            for (who, other, amount, is_merge) in steps {
                if is_merge {
                    let from = replicas[other].clone();
                    replicas[who].merge(&from);
                } else {
                    replicas[who].increment(rid(who as u64), amount).unwrap();
                    sent += u128::from(amount);
                }
                for r in &replicas {
                    prop_assert!(r.value() <= sent);
                }
            }
            let all = replicas.iter().fold(GCounter::new(), |acc, r| merged(&acc, r));
            for r in &mut replicas {
                r.merge(&all);
                prop_assert_eq!(r.value(), sent);
            }
        }
    }

    #[test]
    fn merging_a_zero_component_changes_nothing() {
        let mut a = GCounter::new();
        a.increment(rid(1), 610).unwrap();
        let zero: GCounter = std::iter::once(Component {
            node: 0,
            incarnation: 0,
            count: 0,
        })
        .collect();
        let before = a.clone();
        assert!(!a.merge(&zero));
        assert_eq!(a, before);
    }

    #[test]
    fn merging_totals_by_maximum_would_lose_increments() {
        // Two nodes each add 5 concurrently; per-component merge keeps both.
        let mut a = GCounter::new();
        let mut b = GCounter::new();
        a.increment(rid(1), 5).unwrap();
        b.increment(rid(2), 5).unwrap();
        a.merge(&b);
        assert_eq!(a.value(), 10);
    }

    #[test]
    fn overflow_is_refused_and_changes_nothing() {
        let mut a = GCounter::new();
        a.increment(rid(1), u64::MAX).unwrap();
        let before = a.clone();
        assert_eq!(
            a.increment(rid(1), 1),
            Err(Overflow {
                current: u64::MAX,
                amount: 1
            })
        );
        assert_eq!(a, before);
        // Another replica's component is independent, and the sum is exact.
        a.increment(rid(2), u64::MAX).unwrap();
        assert_eq!(a.value(), 2 * u128::from(u64::MAX));
    }

    #[test]
    fn wire_components_round_trip_and_keep_maximum_of_duplicates() {
        let mut a = GCounter::new();
        a.increment(rid(1), 3).unwrap();
        let wire: Vec<Component> = (&a).into();
        let mut dup = wire.clone();
        dup.push(Component {
            node: 1,
            incarnation: 7,
            count: 1,
        });
        assert_eq!(dup.into_iter().collect::<GCounter>(), a);
    }
}
